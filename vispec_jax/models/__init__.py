"""Target model families and their registry. Each family module exposes the same small functional
surface (param_shapes, init, load, encode_vision, ...); `family(cfg)` picks it, and
`config_from_hf(raw)` parses a Hugging Face config.json into a TargetConfig."""

from vispec_jax.configs import TargetConfig
from vispec_jax.models import llava, qwen2_5_vl

FAMILIES = {"qwen2_5_vl": qwen2_5_vl, "llava": llava, "llava_next": llava}


def family(cfg: TargetConfig):
  """The module of the target's family."""
  return FAMILIES[cfg.family]


def config_from_hf(raw: dict) -> TargetConfig:
  """A TargetConfig from the dict of a Hugging Face config.json (a ConfigError if unusable)."""
  return TargetConfig.from_hf(raw)
