"""Target model families and their registry. Each family module exposes the same functional
surface (HF_TYPES, config_from_hf, param_shapes, name_map, make_image_processor,
preprocess_image, tower_input, encode_item, encode_vision, positions, vision_placeholder);
`family(cfg)` picks it, `config_from_hf(raw)` parses a config.json with it."""

from typing import Any

from vispec_jax.configs import ConfigError, TargetConfig
from vispec_jax.models import hf_config, llava, qwen2_5_vl

FAMILIES = {name: m for m in (qwen2_5_vl, llava) for name in m.HF_TYPES}
HF_TYPES = {name: arch for m in (qwen2_5_vl, llava) for name, arch in m.HF_TYPES.items()}


def family(cfg: TargetConfig):
  """The module of the target's family."""
  return FAMILIES[cfg.family]


def config_from_hf(raw: dict[str, Any], file: str = "config.json") -> TargetConfig:
  """A TargetConfig from the dict of a Hugging Face config.json (`file` names it in errors):
  an unknown architecture, or a key we need that is missing or unusable, is a ConfigError; keys we
  do not read are ignored, as transformers ignores them."""
  hf_config.check_hf_config(raw, file)
  archs = raw.get("architectures") or []
  model_type = raw.get("model_type")
  name = next((t for t, a in HF_TYPES.items() if model_type == t or a in archs), None)
  try:
    if name is None:
      known = ", ".join(f"{t} ({a})" for t, a in HF_TYPES.items())
      raise ConfigError(f"unknown architecture: model_type={model_type!r}, "
                        f"architectures={archs!r}; supported: {known}")
    cfg = FAMILIES[name].config_from_hf(raw)
    hf_config.check_target_config(cfg)
  except ConfigError as e:
    raise ConfigError(f"{file}: {e}") from None
  return cfg
