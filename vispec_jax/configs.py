"""Frozen, hashable configuration dataclasses (static arguments of `jax.jit`; sizes are data,
not classes). `vispec_jax.models.config_from_hf` builds a TargetConfig from a config.json."""

from __future__ import annotations

import dataclasses
import math
import numbers
import numpy as np


class ConfigError(ValueError):
  """A checkpoint config that we cannot use (unknown architecture, missing or bad keys)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class DecoderShape:
  """The sizes of a LLaMA/Qwen2-style decoder layer and its vocabulary: what the target's
  language model (`TextConfig`) and a draft model (`DraftConfig`) both declare."""
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  rms_norm_eps: float = 1e-6
  rope_theta: float = 10000.0
  qkv_bias: bool = False
  hidden_act: str = "silu"


@dataclasses.dataclass(frozen=True, kw_only=True)
class TextConfig(DecoderShape):
  """A LLaMA/Qwen2-style decoder-only language model."""
  num_layers: int
  # Qwen2.5-VL multimodal RoPE: how many rotary frequency pairs use the t/h/w position rows.
  mrope_section: tuple[int, ...] | None = None
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

  @property
  def vision_token_ids(self) -> tuple[int, ...]:
    """The placeholder ids that stand for vision tokens (image, and video if any)."""
    return tuple(t for t in (self.image_token_id, self.video_token_id) if t is not None)


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
  """How to pick tokens. temperature 0 means greedy; top_k 0 and top_p 1 mean no filtering.
  Checked on construction: counts are integers (not bools or floats), temperature and top_p
  finite numbers; NumPy scalars are stored as Python numbers, so equal configs hash equal."""
  max_new_tokens: int = 128
  temperature: float = 0.0
  top_k: int = 0
  top_p: float = 1.0

  def __post_init__(self):
    for name in ("max_new_tokens", "top_k", "temperature", "top_p"):
      integer = name in ("max_new_tokens", "top_k")
      object.__setattr__(self, name, _number(name, getattr(self, name), integer))
    for name, ok, rule in (("max_new_tokens", self.max_new_tokens > 0, "> 0"),
                           ("temperature", self.temperature >= 0, ">= 0"),
                           ("top_k", self.top_k >= 0, ">= 0"),
                           ("top_p", 0.0 < self.top_p <= 1.0, "in (0, 1]")):
      if not ok:
        raise ValueError(f"{name} must be {rule}, got {getattr(self, name)}")


def _number(name: str, value, integer: bool) -> int | float:
  """A Python int (`integer`) or finite float from a Python or NumPy number or a 0-d array;
  bools are refused (True is not a count or a temperature), as are floats for counts."""
  if hasattr(value, "dtype") and getattr(value, "ndim", None) == 0:  # np/jax 0-d arrays
    value = value.item()
  kind, what = (numbers.Integral, "an integer") if integer else (numbers.Real, "a number")
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, kind):
    raise ValueError(f"{name} must be {what}, got {type(value).__name__} {value!r}")
  if integer:
    return int(value)
  if not math.isfinite(value):
    raise ValueError(f"{name} must be finite, got {float(value)}")
  return float(value)
