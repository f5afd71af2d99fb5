"""Reading Hugging Face config.json files: the checks every family parser and the draft loader
share. Every key we read is checked wherever it appears (top level, text_config, vision_config,
rope_parameters/rope_scaling) for its JSON type and range before a parser reads it
(`check_hf_config`), and a parsed TargetConfig's sizes are checked against each other
(`check_target_config`). Keys we do not read are ignored, as transformers ignores them.
"""

from __future__ import annotations

import json
import math
from typing import Any

from vispec_jax.configs import (ConfigError, LlavaVisionConfig, QwenVisionConfig, TargetConfig,
                                TextConfig)
from vispec_jax.layers import ACTIVATIONS


def require(d: dict[str, Any], key: str, where: str) -> Any:
  """d[key], or a ConfigError naming the key and where it belongs."""
  if d.get(key) is None:
    raise ConfigError(f"config.json: missing key {key!r} in {where}")
  return d[key]


def text_config(t: dict[str, Any], raw: dict[str, Any], where: str, **fields) -> TextConfig:
  """The TextConfig of LM keys `t` (LLaMA/Qwen2 names; a missing size is a ConfigError naming
  `where`); `fields` are the family's own (RoPE, biases, ...). Pre-v5 saves put
  tie_word_embeddings inside text_config: either place ties."""
  hidden = int(require(t, "hidden_size", where))
  heads = int(require(t, "num_attention_heads", where))
  return TextConfig(**{
      "vocab_size": int(require(t, "vocab_size", where)), "hidden_size": hidden,
      "intermediate_size": int(require(t, "intermediate_size", where)),
      "num_layers": int(require(t, "num_hidden_layers", where)), "num_heads": heads,
      "num_kv_heads": int(t.get("num_key_value_heads") or heads),
      "head_dim": int(t.get("head_dim") or hidden // heads),
      "rms_norm_eps": float(t.get("rms_norm_eps", 1e-6)), "hidden_act": t.get("hidden_act", "silu"),
      "max_position_embeddings": int(t.get("max_position_embeddings", 32768)),
      "tie_word_embeddings": bool(raw.get("tie_word_embeddings")
                                  or (raw.get("text_config") or {}).get("tie_word_embeddings")),
      **fields})


def as_tuple(x) -> tuple[int, ...]:
  """An int, a list of ints or None (empty) as a tuple of ints."""
  if x is None:
    return ()
  if isinstance(x, (list, tuple)):
    return tuple(int(v) for v in x)
  return (int(x),)


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
  try:
    text = json.dumps(value)
  except (TypeError, ValueError):
    text = repr(value)
  return text if len(text) <= 80 else text[:77] + "..."


def check_target_config(cfg: TargetConfig) -> None:
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
