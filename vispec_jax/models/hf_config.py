"""Reading Hugging Face config.json files: the checks every family parser and the draft loader
share. Every key we read is checked wherever it appears for its JSON type and range before a
parser reads it (`check_hf_config`); a parsed TargetConfig's sizes are checked against each other
after (`check_target_config`). Keys we do not read are ignored, as transformers ignores them.
"""

from __future__ import annotations

import json
import math
from typing import Any

from vispec_jax.configs import (ConfigError, LlavaVisionConfig, QwenVisionConfig, TargetConfig,
                                TextConfig)
from vispec_jax.errors import CheckpointError
from vispec_jax.layers import ACTIVATIONS


def require(d: dict[str, Any], key: str, where: str) -> Any:
  """d[key], or a ConfigError naming the key and where it belongs."""
  if d.get(key) is None:
    raise ConfigError(f"missing key {key!r} in {where}")
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


def special_tokens(eos, pad) -> dict[str, Any]:
  """TargetConfig's eos_token_ids and pad_token_id (the first eos id, else 0, when pad is null)."""
  eos = as_tuple(eos)
  pad = pad if pad is not None else (eos[0] if eos else 0)
  return {"eos_token_ids": eos, "pad_token_id": int(pad)}


def as_tuple(x) -> tuple[int, ...]:
  """An int, a list of ints or None (empty) as a tuple of ints."""
  if x is None:
    return ()
  if isinstance(x, (list, tuple)):
    return tuple(int(v) for v in x)
  return (int(x),)


# Predicates on JSON values (a bool is not a number here).
_is_int = lambda x: isinstance(x, int) and not isinstance(x, bool)
_is_number = lambda x: isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
_size = lambda x: _is_int(x) and x > 0
_token = lambda x: _is_int(x) and x >= 0
_positive = lambda x: _is_number(x) and x > 0
_string = lambda x: isinstance(x, str)
_BOOL = (lambda x: isinstance(x, bool), "must be true or false")


def _list_of(ok, empty: bool = False):
  return lambda v: isinstance(v, list) and (empty or bool(v)) and all(map(ok, v))


def _kinds(*groups) -> dict[str, tuple[Any, str]]:
  """{key: (predicate, what it must hold)} from (space-separated keys, predicate, what)."""
  return {key: (ok, what) for keys, ok, what in groups for key in keys.split()}


# The keys of Hugging Face (and ViSpec draft) config.json files that we read, by what each must
# hold, so a bad value is named by its JSON path (e.g. "text_config.num_attention_heads").
_CONFIG_KINDS = _kinds(
    ("vocab_size hidden_size intermediate_size num_hidden_layers num_attention_heads "
     "num_key_value_heads head_dim max_position_embeddings sliding_window depth num_heads "
     "out_hidden_size patch_size temporal_patch_size spatial_merge_size window_size in_channels "
     "in_chans image_size num_channels num_q", _size, "must be a positive integer"),
    ("image_token_id image_token_index video_token_id vision_start_token_id vision_end_token_id",
     _token, "must be a non-negative integer (a token id)"),
    # old LLaMA configs have pad -1
    ("pad_token_id bos_token_id", _is_int, "must be an integer (a token id)"),
    ("eos_token_id", lambda v: _token(v) or _list_of(_token)(v),
     "must be a token id or a non-empty list of token ids"),
    ("vision_feature_layer", lambda v: _is_int(v) or _list_of(_is_int)(v),
     "must be an integer or a non-empty list of integers"),
    ("fullatt_block_indexes", _list_of(_token, empty=True),
     "must be a list of non-negative integers"),
    ("mrope_section", _list_of(_size), "must be a non-empty list of positive integers"),
    ("rms_norm_eps layer_norm_eps rope_theta tokens_per_second", _positive,
     "must be a positive finite number"),
    ("model_type hidden_act projector_hidden_act vision_feature_select_strategy", _string,
     "must be a string"),
    ("architectures", _list_of(_string, empty=True), "must be a list of strings"),
    ("tie_word_embeddings attention_bias mlp_bias multimodal_projector_bias qkv_bias bias",
     *_BOOL),
    ("text_config vision_config rope_parameters rope_scaling", lambda v: isinstance(v, dict),
     "must be a JSON object"),
)
# May be null: transformers then uses a default (heads for kv heads, hidden/heads for head_dim,
# no window, no pad/bos id, the family's text/vision defaults).
_NULLABLE = {"num_key_value_heads", "head_dim", "sliding_window", "pad_token_id", "bos_token_id",
             "eos_token_id", "architectures", "tie_word_embeddings", "rope_parameters",
             "rope_scaling", "text_config", "vision_config", "image_grid_pinpoints"}

# preprocessor_config.json keys the families pass to transformers' image processors
# (transformers checks them only when the first image is processed).
PREPROCESSOR_KINDS = _kinds(
    ("min_pixels max_pixels", _size, "must be a positive integer"),
    ("size", lambda v: _size(v) or (isinstance(v, dict) and bool(v) and all(
        x is None or _size(x) for x in v.values())),
     "must be a positive integer or an object of positive integers"),
    ("crop_size", lambda v: _size(v) or (isinstance(v, dict) and bool(v) and all(
        map(_size, v.values()))), "must be a positive integer or an object of positive integers"),
    ("image_mean", lambda v: _is_number(v) or _list_of(_is_number)(v),
     "must be a number or a list of numbers"),
    ("image_std", lambda v: _positive(v) or _list_of(_positive)(v),
     "must be a positive number or a list of positive numbers"),
    ("rescale_factor", _positive, "must be a positive number"),
    ("resample", lambda v: _is_int(v) and 0 <= v <= 5,
     "must be a PIL resampling filter number (0-5)"),
    ("do_pad do_resize do_center_crop do_rescale do_normalize do_convert_rgb", *_BOOL),
)


def _kind_error(key: str, value) -> str | None:
  """What is wrong with config value `value` of `key` (None when it is fine)."""
  if value is None:
    return None if key in _NULLABLE else "must not be null"
  ok, what = _CONFIG_KINDS.get(key, (None, None))
  return what if ok and not ok(value) else None


def check_hf_config(raw: dict[str, Any], file: str = "config.json") -> None:
  """Raises ConfigError naming `file` and the JSON path of the first key (among those we read)
  whose value has the wrong type or range: a null or zero size, a string where a number belongs,
  a list where an object belongs, at the top level or nested."""
  if not isinstance(raw, dict):
    raise ConfigError(f"{file}: must hold a JSON object, got a JSON {type(raw).__name__}")
  def walk(d: dict, prefix: str):
    for key, value in d.items():
      why = _kind_error(key, value)
      if why:
        raise ConfigError(f"{file}: {prefix}{key} {why}, got {json_repr(value)}")
      if key in _CONFIG_KINDS and isinstance(value, dict):  # only the object keys pass as dicts
        walk(value, f"{prefix}{key}.")
  walk(raw, "")


def check_preprocessor(raw: dict[str, Any], path: str) -> None:
  """CheckpointError naming preprocessor_config.json and the key whose value is unusable."""
  for key, (ok, what) in PREPROCESSOR_KINDS.items():
    if key in raw and not ok(raw[key]):
      raise CheckpointError(f"{path}: {key} {what}, got {raw[key]!r:.80}")
  lo, hi = raw.get("min_pixels"), raw.get("max_pixels")
  if lo is not None and hi is not None and lo > hi:
    raise CheckpointError(f"{path}: min_pixels {lo} is larger than max_pixels {hi}")


def json_repr(value) -> str:
  """A short JSON rendering of a config value for error messages."""
  try:
    text = json.dumps(value)
  except (TypeError, ValueError):
    text = repr(value)
  return text if len(text) <= 80 else text[:77] + "..."


def check_target_config(cfg: TargetConfig) -> None:
  """Raises ConfigError if the parsed sizes cannot work together (after `check_hf_config`)."""
  t, v = cfg.text, cfg.vision
  def need(ok: bool, msg: str):
    if not ok:
      raise ConfigError(msg)
  # (every other size is a checked positive integer or a positive default)
  need(t.head_dim > 0, f"text head_dim must be > 0, got {t.head_dim} (hidden_size "
       f"{t.hidden_size} / num_attention_heads {t.num_heads}?)")
  need(t.num_heads % t.num_kv_heads == 0, f"num_attention_heads {t.num_heads} is not a multiple "
       f"of num_key_value_heads {t.num_kv_heads}")
  acts = [("text hidden_act", t.hidden_act)]
  if isinstance(v, QwenVisionConfig):
    acts.append(("vision_config.hidden_act", v.hidden_act))
  elif isinstance(v, LlavaVisionConfig):
    acts += [("vision_config.hidden_act", v.clip.hidden_act),
             ("projector_hidden_act", v.projector_act)]
  for name, act in acts:
    need(act in ACTIVATIONS, f"{name} {act!r} is not supported; known: {sorted(ACTIVATIONS)}")
  need(0 <= cfg.image_token_id < t.vocab_size, f"image_token_id {cfg.image_token_id} is "
       f"outside the vocabulary (vocab_size {t.vocab_size})")
  if isinstance(v, QwenVisionConfig):
    need(v.hidden_size % v.num_heads == 0 and v.head_dim % 2 == 0,
         f"vision_config hidden_size {v.hidden_size} / num_heads {v.num_heads} must be an even "
         "integer (the head size, split into 2-D rotary halves)")
    need(all(i < v.depth for i in v.fullatt_block_indexes), "vision_config fullatt_block_indexes "
         f"{list(v.fullatt_block_indexes)} name blocks beyond depth {v.depth}")
    need(v.window_size >= v.patch_size * v.spatial_merge_size, f"vision_config window_size "
         f"{v.window_size} is smaller than one merged patch ({v.patch_size} x "
         f"{v.spatial_merge_size} pixels)")
  elif isinstance(v, LlavaVisionConfig):
    c = v.clip
    need(c.num_heads > 0 and c.hidden_size % c.num_heads == 0, f"vision_config hidden_size "
         f"{c.hidden_size} is not a multiple of num_attention_heads {c.num_heads}")
    need(c.image_size % c.patch_size == 0, f"vision image_size {c.image_size} is not a multiple "
         f"of patch_size {c.patch_size}")
