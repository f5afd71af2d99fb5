"""Frozen, hashable configuration dataclasses.

Every config is a frozen dataclass so it can be a static argument of `jax.jit`; sizes are data,
not classes. `TargetConfig.from_hf` reads a Hugging Face `config.json` (both the flat layout of
older checkpoints and the nested `text_config` layout written by transformers 5).
"""

from __future__ import annotations

import dataclasses
from typing import Any


class ConfigError(ValueError):
  """A checkpoint config that we cannot use (unknown architecture, missing or bad keys)."""


@dataclasses.dataclass(frozen=True)
class TextConfig:
  """A LLaMA/Qwen2-style decoder-only language model."""
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  rms_norm_eps: float = 1e-6
  rope_theta: float = 10000.0
  # Qwen2.5-VL multimodal RoPE: how many rotary frequency pairs use the t/h/w position rows.
  mrope_section: tuple[int, ...] | None = None
  qkv_bias: bool = False
  hidden_act: str = "silu"
  tie_word_embeddings: bool = False
  max_position_embeddings: int = 32768  # the longest prompt + generation we accept


@dataclasses.dataclass(frozen=True)
class QwenVisionConfig:
  """The Qwen2.5-VL vision transformer (window attention + 2x2 patch merger)."""
  depth: int
  hidden_size: int
  intermediate_size: int
  num_heads: int
  out_hidden_size: int
  patch_size: int = 14
  temporal_patch_size: int = 2
  spatial_merge_size: int = 2
  window_size: int = 112
  fullatt_block_indexes: tuple[int, ...] = (7, 15, 23, 31)
  in_channels: int = 3
  tokens_per_second: float = 2.0
  rope_theta: float = 10000.0
  hidden_act: str = "silu"

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def patch_dim(self) -> int:
    return self.in_channels * self.temporal_patch_size * self.patch_size ** 2

  @property
  def merge_unit(self) -> int:
    return self.spatial_merge_size ** 2


@dataclasses.dataclass(frozen=True)
class ClipVisionConfig:
  """A CLIP ViT vision tower (LLaVA): class token, learned positions, pre-LN blocks."""
  num_layers: int
  hidden_size: int
  intermediate_size: int
  num_heads: int
  image_size: int = 336
  patch_size: int = 14
  in_channels: int = 3
  layer_norm_eps: float = 1e-5
  hidden_act: str = "quick_gelu"

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def grid(self) -> int:  # patches per side of one tile
    return self.image_size // self.patch_size

  @property
  def patch_dim(self) -> int:
    return self.in_channels * self.patch_size ** 2


@dataclasses.dataclass(frozen=True)
class LlavaVisionConfig:
  """LLaVA-1.5 / LLaVA-NeXT vision side: CLIP tower, feature selection, 2-layer projector and
  (NeXT) the anyres tiling grid. `feature_layers` index CLIP hidden states (0 = embeddings after
  pre-LN, -1 = last block); several are concatenated. `grid_pinpoints` is None for LLaVA-1.5."""
  clip: ClipVisionConfig
  out_hidden_size: int
  feature_layers: tuple[int, ...] = (-2,)
  select_strategy: str = "default"  # "default" drops the CLS token, "full" keeps it
  projector_act: str = "gelu"
  projector_bias: bool = True
  grid_pinpoints: tuple[tuple[int, int], ...] | None = None  # (height, width) per resolution


@dataclasses.dataclass(frozen=True)
class TargetConfig:
  """A target VLM: which family, its language model, its vision tower and special tokens."""
  family: str
  text: TextConfig
  vision: QwenVisionConfig | LlavaVisionConfig | None
  image_token_id: int
  video_token_id: int | None = None
  vision_start_token_id: int | None = None
  vision_end_token_id: int | None = None
  eos_token_ids: tuple[int, ...] = ()
  pad_token_id: int = 0

  @staticmethod
  def from_hf(raw: dict[str, Any]) -> "TargetConfig":
    """Builds a config from the dict of a Hugging Face `config.json`.

    Keys we do not read are ignored, as transformers ignores them (real configs carry many:
    use_cache, initializer_range, torch_dtype, ...); an unknown architecture, or a key we need
    that is missing or has an unsupported value, is a ConfigError.
    """
    archs = raw.get("architectures") or []
    model_type = raw.get("model_type")
    if model_type == "qwen2_5_vl" or "Qwen2_5_VLForConditionalGeneration" in archs:
      return _qwen2_5_vl_from_hf(raw)
    if model_type in ("llava", "llava_next") or {"LlavaForConditionalGeneration",
                                                  "LlavaNextForConditionalGeneration"} & set(archs):
      from vispec_jax.models import llava  # the parser lives with the family
      return llava.config_from_hf(raw)
    known = ("qwen2_5_vl (Qwen2_5_VLForConditionalGeneration), llava (LlavaForConditionalGeneration), "
             "llava_next (LlavaNextForConditionalGeneration)")
    raise ConfigError(
        f"unknown architecture: model_type={model_type!r}, architectures={archs!r}; "
        f"supported: {known}")


def _require(d: dict[str, Any], key: str, where: str) -> Any:
  if key not in d:
    raise ConfigError(f"config.json: missing key {key!r} in {where}")
  return d[key]


def _as_tuple(x) -> tuple[int, ...]:
  if x is None:
    return ()
  if isinstance(x, (list, tuple)):
    return tuple(int(v) for v in x)
  return (int(x),)


def _qwen2_5_vl_from_hf(raw: dict[str, Any]) -> TargetConfig:
  # transformers 5 nests the LM under text_config; older checkpoints keep it flat at top level.
  t = {**raw, **raw.get("text_config", {})}
  where = "text_config" if "text_config" in raw else "config"
  rope = t.get("rope_parameters") or {}
  rope_scaling = t.get("rope_scaling") or {}
  theta = rope.get("rope_theta", t.get("rope_theta", 1e6))
  section = rope.get("mrope_section") or rope_scaling.get("mrope_section") or [16, 24, 24]
  for r in (rope, rope_scaling):  # scaled RoPE (yarn, linear, dynamic...) would load but be wrong
    rope_type = r.get("rope_type", r.get("type", "default"))
    if rope_type not in ("default", "mrope"):
      raise ConfigError(f"config.json: rope type {rope_type!r} is not supported (plain mRoPE only)")
  hidden = int(_require(t, "hidden_size", where))
  heads = int(_require(t, "num_attention_heads", where))
  head_dim = int(t.get("head_dim") or hidden // heads)
  if 2 * sum(section) != head_dim:
    raise ConfigError(f"config.json: mrope_section {section} must sum to head_dim/2 = {head_dim // 2}")
  text = TextConfig(
      vocab_size=int(_require(t, "vocab_size", where)),
      hidden_size=hidden,
      intermediate_size=int(_require(t, "intermediate_size", where)),
      num_layers=int(_require(t, "num_hidden_layers", where)),
      num_heads=heads,
      num_kv_heads=int(t.get("num_key_value_heads") or heads),
      head_dim=head_dim,
      rms_norm_eps=float(t.get("rms_norm_eps", 1e-6)),
      rope_theta=float(theta),
      mrope_section=tuple(int(s) for s in section),
      qkv_bias=True,
      hidden_act=t.get("hidden_act", "silu"),
      # Pre-v5 saves put tie_word_embeddings inside text_config; either place ties.
      max_position_embeddings=int(t.get("max_position_embeddings", 32768)),
      tie_word_embeddings=bool(raw.get("tie_word_embeddings")
                               or raw.get("text_config", {}).get("tie_word_embeddings")),
  )
  v = _require(raw, "vision_config", "config")
  vrope = v.get("rope_parameters") or {}
  vision = QwenVisionConfig(
      depth=int(_require(v, "depth", "vision_config")),
      hidden_size=int(_require(v, "hidden_size", "vision_config")),
      intermediate_size=int(_require(v, "intermediate_size", "vision_config")),
      num_heads=int(_require(v, "num_heads", "vision_config")),
      out_hidden_size=int(v.get("out_hidden_size", hidden)),
      patch_size=int(v.get("patch_size", 14)),
      temporal_patch_size=int(v.get("temporal_patch_size", 2)),
      spatial_merge_size=int(v.get("spatial_merge_size", 2)),
      window_size=int(v.get("window_size", 112)),
      fullatt_block_indexes=_as_tuple(v.get("fullatt_block_indexes", (7, 15, 23, 31))),
      in_channels=int(v.get("in_channels", v.get("in_chans", 3))),
      tokens_per_second=float(v.get("tokens_per_second", 2)),
      rope_theta=float(vrope.get("rope_theta", 10000.0)),
      hidden_act=v.get("hidden_act", "silu"),
  )
  if vision.out_hidden_size != hidden:
    raise ConfigError(f"config.json: vision out_hidden_size {vision.out_hidden_size} != "
                      f"text hidden_size {hidden}")
  eos = _as_tuple(raw.get("eos_token_id", t.get("eos_token_id")))
  pad = raw.get("pad_token_id")
  return TargetConfig(
      family="qwen2_5_vl",
      text=text,
      vision=vision,
      image_token_id=int(raw.get("image_token_id", 151655)),
      video_token_id=int(raw.get("video_token_id", 151656)),
      vision_start_token_id=int(raw.get("vision_start_token_id", 151652)),
      vision_end_token_id=int(raw.get("vision_end_token_id", 151653)),
      eos_token_ids=eos,
      pad_token_id=int(pad if pad is not None else (eos[0] if eos else 0)),
  )


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
  """How to pick tokens. temperature 0 means greedy; top_k 0 and top_p 1 mean no filtering."""
  max_new_tokens: int = 128
  temperature: float = 0.0
  top_k: int = 0
  top_p: float = 1.0

  def __post_init__(self):
    if self.max_new_tokens <= 0:
      raise ValueError(f"max_new_tokens must be > 0, got {self.max_new_tokens}")
    if self.temperature < 0:
      raise ValueError(f"temperature must be >= 0, got {self.temperature}")
    if self.top_k < 0:
      raise ValueError(f"top_k must be >= 0, got {self.top_k}")
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
