"""Loading and saving draft checkpoints: the released ViSpec folders and our own format.

Released drafts (vispec-reference.md sections 2.1-2.3, 9): `config.json` (a LLaMA config of the
one-layer draft) and safetensors or `pytorch_model.bin` weights under the PyTorch module names
(embed_tokens, fc, layers.0.*, imadpt.*, img_fc; no imadpt: a stage-1 EAGLE draft; medusa_head.*:
Medusa). Missing fields fall back as the reference does (rope_theta 10000, qkv_bias False, bias
True); num_q is read from imadpt.q. The embedding copy is checked against the target's table and
dropped (drafts embed through the target's); different values only warn by default, since bf16
and fp16 copies of one table differ by rounding and drafting stays lossless with any draft.

Our format: `config.json` {"vispec_jax_draft": {DraftConfig fields}} and `model.safetensors`
under the params paths ("layer.attn.q.kernel", kernels [in, out]); it round-trips exactly.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vispec_jax import checkpoints, layers
from vispec_jax.checkpoints import CheckpointError, NameMap
from vispec_jax.configs import ConfigError
from vispec_jax.draft import DraftConfig, check_params, make_drafter, param_shapes
from vispec_jax.models import decoder
from vispec_jax.models.hf_config import check_hf_config, json_repr

FORMAT_KEY = "vispec_jax_draft"
WEIGHTS = "model.safetensors"


@dataclasses.dataclass(frozen=True, eq=False)
class Draft:
  """A loaded draft: config, params pytree, and the drafter object the engine takes:
  `vj.speculative_generate(target, draft.drafter, draft.params, batch)`."""
  config: DraftConfig
  params: Any
  folder: str | None = None

  @property
  def drafter(self):
    return make_drafter(self.config)


# ------------------------------------------------------------------------- name maps


# Wrappers a state dict may have been saved through (DDP, the SpecModel attribute).
OFFICIAL_PREFIXES = [("module.", ""), ("spec_layer.", "")]


def official_name_map(cfg: DraftConfig) -> NameMap:
  """Reference (PyTorch) tensor names -> our params paths."""
  m = NameMap(OFFICIAL_PREFIXES)
  m.ignore("embed_tokens.weight")  # checked against the target, not kept
  linear = functools.partial(decoder.add_linear, m)
  if cfg.kind == "medusa":
    for i in range(cfg.medusa_heads):
      linear(f"medusa_head.{i}.0.linear", ("heads", i))
    return m
  linear("fc", ("fc",), cfg.fc_bias)
  for proj in "qkvo":
    linear(f"layers.0.self_attn.{proj}_proj", ("layer", "attn", proj), cfg.qkv_bias and proj != "o")
  for proj in ("gate", "up", "down"):
    linear(f"layers.0.mlp.{proj}_proj", ("layer", "mlp", proj), False)
  m.add("layers.0.post_attention_layernorm.weight", ("layer", "post_norm", "scale"))
  if cfg.kind == "vispec":
    m.add("imadpt.q", ("adaptor", "q"))
    for proj in "kvo":
      linear(f"imadpt.{proj}_proj", ("adaptor", proj), cfg.qkv_bias and proj != "o")
    linear("img_fc", ("img_fc",), cfg.fc_bias)
  return m


def native_name_map(cfg: DraftConfig) -> NameMap:
  """Our format: every param under its dotted path, stored as is."""
  m = NameMap([])
  for path, _ in jax.tree_util.tree_flatten_with_path(param_shapes(cfg))[0]:
    keys = tuple(getattr(k, "key", getattr(k, "idx", None)) for k in path)
    m.add(".".join(map(str, keys)), keys)
  return m


# --------------------------------------------------------------------------- configs


def _official_config(raw: dict, header: dict[str, dict], path: str) -> DraftConfig:
  """DraftConfig from a reference draft config.json, a LLaMA config whose keys a draft does not
  use are ignored (as transformers ignores them); the kind and num_q from the tensors."""
  def need(key):
    if key not in raw:
      raise CheckpointError(f"{path}: missing key {key!r}")
    return raw[key]
  if raw.get("model_type", "llama") != "llama":
    raise CheckpointError(f"{path}: model_type {raw['model_type']!r} is not a draft "
                          "(ViSpec/EAGLE/Medusa drafts have model_type 'llama'); is this the "
                          "target's folder?")
  if raw.get("rope_scaling"):
    raise CheckpointError(f"{path}: rope_scaling {raw['rope_scaling']} is not supported for drafts")
  layers_n = int(raw.get("num_hidden_layers", 1))
  if layers_n != 1:
    raise CheckpointError(f"{path}: num_hidden_layers is {layers_n}; ViSpec/EAGLE drafts have "
                          "exactly 1 layer")
  hidden, heads = int(need("hidden_size")), int(need("num_attention_heads"))
  medusa = [n.split(".")[1] for n in header if n.startswith("medusa_head.")]
  kind = "vispec" if "imadpt.q" in header else "medusa" if medusa else "eagle"
  num_q = int(raw.get("num_q", 2))
  if kind == "vispec":
    stored = int(header["imadpt.q"]["shape"][0])
    if "num_q" in raw and stored != num_q:
      raise CheckpointError(f"{path} says num_q {num_q} but imadpt.q holds {stored} queries")
    num_q = stored
  return DraftConfig(
      kind=kind, hidden_size=hidden,
      intermediate_size=int(raw.get("intermediate_size", 0) if kind == "medusa"
                            else need("intermediate_size")),
      num_heads=heads, num_kv_heads=int(raw.get("num_key_value_heads") or heads),
      head_dim=hidden // heads, vocab_size=int(need("vocab_size")),
      rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
      rope_theta=float(raw.get("rope_theta", 10000.0)),
      qkv_bias=bool(raw.get("qkv_bias", False)), fc_bias=bool(raw.get("bias", True)),
      hidden_act=raw.get("hidden_act", "silu"), num_q=num_q,
      medusa_heads=1 + max(map(int, medusa)) if kind == "medusa" else 5)


# What each DraftConfig field must hold in our config.json (by its annotation).
_FIELD_CHECKS = {
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0,
            "a positive integer"),
    "float": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
              and math.isfinite(v) and v > 0, "a positive finite number"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "str": (lambda v: isinstance(v, str), "a string"),
}


def _native_config(raw: dict, path: str) -> DraftConfig:
  fields = {f.name: f for f in dataclasses.fields(DraftConfig)}
  d = raw[FORMAT_KEY]
  if not isinstance(d, dict):
    raise CheckpointError(f"{path}: {FORMAT_KEY} must be a JSON object, got {json_repr(d)}")
  unknown = sorted(set(d) - set(fields))
  if unknown:
    raise CheckpointError(f"{path}: unknown draft config fields {unknown}")
  for name, value in d.items():
    ok, what = _FIELD_CHECKS[str(fields[name].type)]
    if not ok(value) and not (name == "intermediate_size" and value == 0
                              and d.get("kind") == "medusa"):
      raise CheckpointError(f"{path}: {FORMAT_KEY}.{name} must be {what}, got {json_repr(value)}")
  try:
    return DraftConfig(**d)
  except (TypeError, ValueError) as e:
    raise CheckpointError(f"{path}: bad draft config: {e}") from None


def check_config(cfg: DraftConfig, text, where: str) -> None:
  """Raises CheckpointError (prefixed `where`) if the draft's sizes cannot work together or,
  given the target's TextConfig `text`, do not fit that target."""
  def need(ok: bool, msg: str):
    if not ok:
      raise CheckpointError(f"{where}: draft {msg}")
  checks = [] if text is None else [("hidden_size", cfg.hidden_size, text.hidden_size),
                                    ("vocab_size", cfg.vocab_size, text.vocab_size)]
  if cfg.kind != "medusa":
    need(cfg.num_heads * cfg.head_dim == cfg.hidden_size, f"num_attention_heads {cfg.num_heads} "
         f"x head_dim {cfg.head_dim} != hidden_size {cfg.hidden_size}")
    need(cfg.num_heads % cfg.num_kv_heads == 0, f"num_attention_heads {cfg.num_heads} is not a "
         f"multiple of num_key_value_heads {cfg.num_kv_heads}")
    need(cfg.hidden_act in layers.ACTIVATIONS, f"hidden_act {cfg.hidden_act!r} is not "
         f"supported; known: {sorted(layers.ACTIVATIONS)}")
    if text is not None:
      checks.append(("num_attention_heads", cfg.num_heads, text.num_heads))
  for name, mine, theirs in checks:
    need(mine == theirs, f"{name} is {mine} but the target's {name} is {theirs}: this draft was "
         "made for another target")


def check_embedding(stored: np.ndarray, table, mode: str = "warn", rtol: float = 1e-2) -> None:
  """Compares a checkpoint's embedding copy [V, E] with the target's table, in row blocks."""
  if tuple(stored.shape) != tuple(table.shape):
    raise CheckpointError(f"draft embed_tokens.weight has shape {tuple(stored.shape)} but the "
                          f"target's embedding is {tuple(table.shape)}")
  if mode == "skip":
    return
  worst, scale = 0.0, 0.0
  for i in range(0, stored.shape[0], 8192):
    a = np.asarray(stored[i:i + 8192], np.float32)
    b = np.asarray(jax.device_get(table[i:i + 8192]), np.float32)
    worst = max(worst, float(np.max(np.abs(a - b), initial=0.0)))
    scale = max(scale, float(np.max(np.abs(b), initial=0.0)))
  if worst > rtol * max(scale, 1e-12):
    msg = (f"draft embed_tokens.weight differs from the target's embedding (max abs difference "
           f"{worst:.3g}, table scale {scale:.3g}); the target's embedding is used")
    if mode == "error":
      raise CheckpointError(msg)
    warnings.warn(msg, stacklevel=3)


# ----------------------------------------------------------------------- load / save


def load_draft(folder: str, target=None, dtype=None, embedding_check: str = "warn") -> Draft:
  """Loads a released ViSpec/EAGLE/Medusa draft folder or one written by `save_draft`.

  With the `Target` it will run with, the draft's sizes and (released checkpoints) embedding copy
  are checked against it; `embedding_check` "warn", "error" or "skip" says what a copy whose
  values differ does (a shape mismatch is always an error). dtype: default the target's
  (float32 without a target). Raises CheckpointError naming the file, tensor or config value.
  """
  if embedding_check not in ("warn", "error", "skip"):
    raise ValueError(f"embedding_check must be 'warn', 'error' or 'skip', got {embedding_check!r}")
  raw = checkpoints.read_config(folder)
  path = os.path.join(folder, "config.json")
  native = FORMAT_KEY in raw
  if not native:
    try:
      check_hf_config(raw, path)
    except ConfigError as e:
      raise CheckpointError(str(e)) from None
  files = checkpoints.weight_files(folder)
  header, where = {}, {}  # canonical official name -> header entry / (open file, stored name)
  for weights in [] if native else map(checkpoints.open_weights, files):
    for name, info in weights.header.items():
      canon = NameMap(OFFICIAL_PREFIXES).canonical(name)
      header[canon], where[canon] = info, (weights, name)
  if dtype is None:
    dtype = jnp.float32 if target is None else target.params["text"]["embed"].dtype
  cfg = _native_config(raw, path) if native else _official_config(raw, header, path)
  check_config(cfg, None if target is None else target.config.text, path)
  name_map = native_name_map(cfg) if native else official_name_map(cfg)
  params = checkpoints.load_params(files, name_map, param_shapes(cfg, dtype), dtype)
  if target is not None and "embed_tokens.weight" in where:
    weights, name = where["embed_tokens.weight"]
    check_embedding(weights.get(name), target.params["text"]["embed"], embedding_check)
  return Draft(cfg, params, folder)


def save_draft(folder: str, cfg: DraftConfig, params, dtype=None) -> str:
  """Writes `params` of `cfg` in our format (config.json + model.safetensors, each written to
  a temporary name and renamed). Returns the folder."""
  check_params(cfg, params)
  os.makedirs(folder, exist_ok=True)
  checkpoints.save_hf(params, native_name_map(cfg), os.path.join(folder, WEIGHTS), dtype,
                      fmt=FORMAT_KEY)
  path = os.path.join(folder, "config.json")
  with open(path + ".tmp", "w") as f:
    json.dump({FORMAT_KEY: dataclasses.asdict(cfg)}, f, indent=1)
  os.replace(path + ".tmp", path)
  return folder
