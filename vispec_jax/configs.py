"""Frozen, hashable configuration dataclasses.

Every config is a frozen dataclass so it can be a static argument of `jax.jit`; sizes are data,
not classes. `TargetConfig.from_hf` reads a Hugging Face `config.json` (both the flat layout of
older checkpoints and the nested `text_config` layout written by transformers 5).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from typing import Any

import numpy as np


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
    that is missing or has an unsupported value, is a ConfigError. Before any family reads it,
    every key we read is checked wherever it appears (top level, text_config, vision_config,
    rope_parameters/rope_scaling) for its JSON type and range (`check_hf_config`), and after
    parsing the sizes are checked against each other (`check_target_config`).
    """
    check_hf_config(raw)
    cfg = TargetConfig._parse(raw)
    check_target_config(cfg)
    return cfg

  @staticmethod
  def _parse(raw: dict[str, Any]) -> "TargetConfig":
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
  if d.get(key) is None:
    raise ConfigError(f"config.json: missing key {key!r} in {where}")
  return d[key]


# ------------------------------------------------------------- config.json validation

# The keys of Hugging Face (and ViSpec draft) config.json files that we read, by what each must
# hold. They are checked wherever they appear, so a bad value is named by its JSON path
# (e.g. "text_config.num_attention_heads") before a parser turns it into a TypeError.
_SIZE_KEYS = {  # positive integers
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "max_position_embeddings", "sliding_window", "depth",
    "num_heads", "out_hidden_size", "patch_size", "temporal_patch_size", "spatial_merge_size",
    "window_size", "in_channels", "in_chans", "image_size", "num_channels", "num_q",
}
_ID_KEYS = {  # token ids: non-negative integers
    "image_token_id", "image_token_index", "video_token_id", "vision_start_token_id",
    "vision_end_token_id",
}
_INT_KEYS = {"pad_token_id", "bos_token_id"}  # integers (old LLaMA configs have pad -1)
_POSITIVE_KEYS = {"rms_norm_eps", "layer_norm_eps", "rope_theta", "tokens_per_second"}
_STRING_KEYS = {"model_type", "hidden_act", "projector_hidden_act", "vision_feature_select_strategy"}
_BOOL_KEYS = {"tie_word_embeddings", "attention_bias", "mlp_bias", "multimodal_projector_bias",
              "qkv_bias", "bias"}
_OBJECT_KEYS = {"text_config", "vision_config", "rope_parameters", "rope_scaling"}
# May be null: transformers then uses a default (heads for kv heads, hidden/heads for head_dim,
# no window, no pad/bos id, the family's text/vision defaults).
_NULLABLE = {"num_key_value_heads", "head_dim", "sliding_window", "pad_token_id", "bos_token_id",
             "eos_token_id", "architectures", "tie_word_embeddings", "rope_parameters",
             "rope_scaling", "text_config", "vision_config", "image_grid_pinpoints"}


def _is_int(x) -> bool:
  return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _kind_error(name: str, value) -> str | None:
  """What is wrong with config value `value` of key path `name` (None when it is fine)."""
  key = name.rsplit(".", 1)[-1]
  if value is None:
    return None if key in _NULLABLE else "must not be null"
  if key in _OBJECT_KEYS and not isinstance(value, dict):
    return "must be a JSON object"
  if key in _SIZE_KEYS and not (_is_int(value) and value > 0):
    return "must be a positive integer"
  if key in _ID_KEYS and not (_is_int(value) and value >= 0):
    return "must be a non-negative integer (a token id)"
  if key in _INT_KEYS and not _is_int(value):
    return "must be an integer (a token id)"
  if key == "eos_token_id" and not (_is_int(value) and value >= 0) and not (
      isinstance(value, list) and value and all(_is_int(v) and v >= 0 for v in value)):
    return "must be a token id or a non-empty list of token ids"
  if key == "vision_feature_layer" and not _is_int(value) and not (
      isinstance(value, list) and value and all(_is_int(v) for v in value)):
    return "must be an integer or a non-empty list of integers"
  if key == "fullatt_block_indexes" and not (
      isinstance(value, list) and all(_is_int(v) and v >= 0 for v in value)):
    return "must be a list of non-negative integers"
  if key == "mrope_section" and not (
      isinstance(value, list) and value and all(_is_int(v) and v > 0 for v in value)):
    return "must be a non-empty list of positive integers"
  if key in _POSITIVE_KEYS and not (_is_number(value) and value > 0):
    return "must be a positive finite number"
  if key in _STRING_KEYS and not isinstance(value, str):
    return "must be a string"
  if key == "architectures" and not (isinstance(value, list)
                                     and all(isinstance(v, str) for v in value)):
    return "must be a list of strings"
  if key in _BOOL_KEYS and not isinstance(value, bool):
    return "must be true or false"
  return None


def check_hf_config(raw: dict[str, Any], file: str = "config.json") -> None:
  """Raises ConfigError naming `file` and the JSON path of the first key (among those we read)
  whose value has the wrong type or range: a null or zero size, a string where a number belongs,
  a list where an object belongs, at the top level or nested. Other keys are not looked at."""
  if not isinstance(raw, dict):
    raise ConfigError(f"{file}: must hold a JSON object, got a JSON {type(raw).__name__}")
  def walk(d: dict, prefix: str):
    for key, value in d.items():
      name = prefix + key
      why = _kind_error(name, value)
      if why:
        raise ConfigError(f"{file}: {name} {why}, got {json_repr(value)}")
      if key in _OBJECT_KEYS and isinstance(value, dict):
        walk(value, name + ".")
  walk(raw, "")


def json_repr(value) -> str:
  """A short JSON rendering of a config value for error messages."""
  import json
  try:
    text = json.dumps(value)
  except (TypeError, ValueError):
    text = repr(value)
  return text if len(text) <= 80 else text[:77] + "..."


def check_target_config(cfg: "TargetConfig") -> None:
  """Raises ConfigError if the parsed sizes cannot work together (after `check_hf_config`)."""
  t = cfg.text
  def need(ok: bool, msg: str):
    if not ok:
      raise ConfigError(f"config.json: {msg}")
  for f in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
            "num_kv_heads", "head_dim", "max_position_embeddings"):
    need(getattr(t, f) > 0, f"text {f} must be > 0, got {getattr(t, f)} (hidden_size "
         f"{t.hidden_size} / num_attention_heads {t.num_heads}?)")
  need(t.num_heads % t.num_kv_heads == 0, f"num_attention_heads {t.num_heads} is not a multiple "
       f"of num_key_value_heads {t.num_kv_heads}")
  need(t.rms_norm_eps > 0 and t.rope_theta > 0, "rms_norm_eps and rope_theta must be > 0")
  from vispec_jax.layers import ACTIVATIONS  # jax-heavy; only needed here
  acts = [("text hidden_act", t.hidden_act)]
  if isinstance(cfg.vision, QwenVisionConfig):
    acts.append(("vision_config.hidden_act", cfg.vision.hidden_act))
  for name, act in acts:
    need(act in ACTIVATIONS, f"{name} {act!r} is not supported; known: {sorted(ACTIVATIONS)}")
  need(0 <= cfg.image_token_id < t.vocab_size, f"image_token_id {cfg.image_token_id} is "
       f"outside the vocabulary (vocab_size {t.vocab_size})")
  v = cfg.vision
  if isinstance(v, QwenVisionConfig):
    need(v.hidden_size % v.num_heads == 0 and v.head_dim % 2 == 0,
         f"vision_config hidden_size {v.hidden_size} / num_heads {v.num_heads} must be an even "
         "integer (the head size, split into 2-D rotary halves)")
    need(all(i < v.depth for i in v.fullatt_block_indexes), f"vision_config "
         f"fullatt_block_indexes {list(v.fullatt_block_indexes)} name blocks beyond depth {v.depth}")
    need(v.window_size >= v.patch_size * v.spatial_merge_size, f"vision_config window_size "
         f"{v.window_size} is smaller than one merged patch ({v.patch_size} x "
         f"{v.spatial_merge_size} pixels)")
  elif isinstance(v, LlavaVisionConfig):
    c = v.clip
    need(c.num_layers > 0 and c.num_heads > 0 and c.hidden_size % c.num_heads == 0,
         f"vision_config hidden_size {c.hidden_size} is not a multiple of num_attention_heads "
         f"{c.num_heads}")


def _as_tuple(x) -> tuple[int, ...]:
  if x is None:
    return ()
  if isinstance(x, (list, tuple)):
    return tuple(int(v) for v in x)
  return (int(x),)


def _qwen2_5_vl_from_hf(raw: dict[str, Any]) -> TargetConfig:
  # transformers 5 nests the LM under text_config; older checkpoints keep it flat at top level.
  t = {**raw, **(raw.get("text_config") or {})}
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
                               or (raw.get("text_config") or {}).get("tie_word_embeddings")),
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
  """How to pick tokens. temperature 0 means greedy; top_k 0 and top_p 1 mean no filtering.

  Validated on construction (`vj.generate` and `vj.speculative_generate` build one): counts must
  be integers (not bools or floats), temperature and top_p finite real numbers. NumPy scalars
  are accepted and stored as Python numbers, so equal configs hash equal.
  """
  max_new_tokens: int = 128
  temperature: float = 0.0
  top_k: int = 0
  top_p: float = 1.0

  def __post_init__(self):
    set_ = functools.partial(object.__setattr__, self)
    set_("max_new_tokens", _integer("max_new_tokens", self.max_new_tokens))
    set_("top_k", _integer("top_k", self.top_k))
    set_("temperature", _real("temperature", self.temperature))
    set_("top_p", _real("top_p", self.top_p))
    if self.max_new_tokens <= 0:
      raise ValueError(f"max_new_tokens must be > 0, got {self.max_new_tokens}")
    if self.temperature < 0:
      raise ValueError(f"temperature must be >= 0, got {self.temperature}")
    if self.top_k < 0:
      raise ValueError(f"top_k must be >= 0, got {self.top_k}")
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


def _scalar(name: str, value, kinds: tuple[type, ...], what: str):
  """`value` if it is a (NumPy or 0-d array) scalar of one of `kinds`, else a ValueError;
  bools are refused (True is not a count or a temperature)."""
  if hasattr(value, "dtype") and getattr(value, "ndim", None) == 0:  # np/jax 0-d arrays
    value = value.item()
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, kinds):
    raise ValueError(f"{name} must be {what}, got {type(value).__name__} {value!r}")
  return value


def _integer(name: str, value) -> int:
  """A Python int from an int or NumPy integer; bools, floats and strings are refused."""
  return int(_scalar(name, value, (numbers.Integral,), "an integer"))


def _real(name: str, value) -> float:
  """A finite Python float from an int, float or NumPy number; NaN, inf and bools refused."""
  value = float(_scalar(name, value, (numbers.Real,), "a number"))
  if not math.isfinite(value):
    raise ValueError(f"{name} must be finite, got {value}")
  return value
