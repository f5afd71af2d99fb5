"""Defaults every training config starts from, and the `arg` parser of `get_config(arg)`.

Every key the trainer and datagen read is listed here with its meaning, so a config file only
states what it changes. Units: steps are optimizer steps; batch sizes are global (all hosts).
"""

from __future__ import annotations

import math

import ml_collections
from ml_collections.config_dict import placeholder

from train import losses

REFERENCE_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. The "
                    "assistant gives helpful, detailed, and polite answers to the human's "
                    "questions.")
REFERENCE_INSTRUCTION = "Please answer with at least 1000 words."


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """big_vision-style `get_config` argument: "runlocal,draft=eagle" -> {runlocal: True, ...}.
  Keys must be in `defaults`; values are cast to the default's type."""
  out = dict(defaults)
  for item in (arg or "").split(","):
    if not item:
      continue
    key, _, value = item.partition("=")
    if key not in defaults:
      raise ValueError(f"unknown config arg {key!r}; known: {sorted(defaults)}")
    kind = type(defaults[key])
    if kind is bool:
      out[key] = value.lower() not in ("0", "false", "no") if value else True
    else:
      out[key] = kind(value)
  return ml_collections.ConfigDict(out)


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0

  # The frozen target: a Hugging Face checkpoint folder, or tiny:qwen / tiny:llava /
  # tiny:llava_next (random tiny models written once under cache_dir).
  c.target = ml_collections.ConfigDict(dict(folder="tiny:qwen", dtype="float32",
                                            cache_dir=placeholder(str)))

  # The draft: kind "eagle" (stage 1 / EAGLE baseline), "vispec" (stage 2) or "medusa".
  # init_from: a draft folder (ours or a released one) to start from; a stage-1 EAGLE draft
  # initialises a ViSpec draft's shared layers (adaptor and img_fc start fresh).
  # overrides: DraftConfig fields other than the target-derived shapes (num_q, global_feature,
  # medusa_heads).
  c.draft = ml_collections.ConfigDict(dict(
      kind="vispec", init_from=placeholder(str), dtype="float32",
      overrides=ml_collections.ConfigDict(dict(num_q=2, global_feature=True))))

  # Data generation (python -m train.datagen). image_position: the image "after" the question
  # (the reference), "before" it (as vj.prepare places it) or "mixed" (alternating by input).
  # overwrite: data already under data.dir/data.name made with other settings (inputs, prompts,
  # target...) is deleted and generated again; without it such a run refuses. Data made with the
  # same settings is always reused (a restarted run resumes).
  c.datagen = ml_collections.ConfigDict(dict(
      input="synthetic:16", image_size=(224, 224), system_prompt=REFERENCE_SYSTEM,
      instruction=REFERENCE_INSTRUCTION, image_position="after", max_new_tokens=1024,
      batch_size=8, chunk_size=64,
      store_features=False, feature_dtype="float32", worker=0, num_workers=1, progress=True,
      question_key="question", image_key="image", answer_key=placeholder(str),
      overwrite=False,
      crash_after_chunks=-1,  # tests: SIGKILL after that many chunks
      tfds_data_dir=placeholder(str)))

  # Training data: the TFDS dataset datagen wrote (data.dir / vispec_draft_data / data.name).
  # features: "online" (run the target in the train step) or "precomputed" (records hold the
  # target's features, datagen.store_features). Sequences are cut to max_len and padded to the
  # smallest bucket holding the longest sequence of the global batch.
  c.data = ml_collections.ConfigDict(dict(
      dir="/tmp/vispec_data", name="default", features="online", max_len=4096,
      buckets=(256, 512, 1024, 2048, 4096), eval_fraction=0.05, shuffle_seed=0,
      worker_count=0, prefetch=2, limit=placeholder(int),  # limit: first N records only
      # mix: another dataset under data.dir (its name) giving `weight` of the train rows;
      # `datagen`: overrides of config.datagen that build it when it is missing (e.g. its input)
      mix=ml_collections.ConfigDict(dict(name=placeholder(str), weight=0.0,
                                         datagen=ml_collections.ConfigDict()))))

  c.batch_size = 8            # global
  c.num_epochs = 20           # reference: warmup 1 epoch, linear decay to 0 at epoch 20
  c.total_steps = placeholder(int)   # overrides num_epochs if set
  c.warmup_epochs = 1.0
  c.warmup_steps = placeholder(int)  # overrides warmup_epochs if set

  # Optimiser (reference: AdamW betas (0.9, 0.95), PyTorch's default weight decay 0.01,
  # lr 3e-6, gradient clipping by value 0.5). clip_norm: clip by global norm instead/as well.
  c.optim = ml_collections.ConfigDict(dict(
      lr=3e-6, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.01, clip_value=0.5,
      clip_norm=placeholder(float),
      lr_scales=placeholder(object)))  # {params path prefix: lr multiplier}, e.g. {"vision": 0.1}

  # Losses (train/losses.py): weight of each term (0 = off); mtp_steps: extra passes feeding
  # the draft its own shifted predictions; mask_offset: draft position i is supervised iff token
  # i + mask_offset is an answer token (2: every answer token is predicted exactly once, the
  # reference's stage-2 masks). `set_stage` fills in the reference's values.
  c.loss = ml_collections.ConfigDict(dict(
      weights=ml_collections.ConfigDict(dict(feature_smooth_l1=0.0, soft_ce=0.0, prob_l1=0.0,
                                             listmle=0.0)),
      mtp_steps=0, mask_offset=2))
  # Uniform input-feature noise: f += (U[0,1) - 0.5) * scale * (ref_len / S if per_length).
  c.noise = ml_collections.ConfigDict(dict(scale=0.2, ref_len=512, per_length=True))

  # Mesh (data, fsdp, tensor); one entry may be -1 (all remaining devices).
  c.mesh = (1, -1, 1)
  c.sharding = ml_collections.ConfigDict(dict(rules=placeholder(object)))

  c.log_every = 10
  c.log_sample_ids = False    # log the record indices of every step (data-order checks)
  c.progress = True
  c.eval_every = 500          # 0: no eval
  c.eval_batches = 8
  c.eval_depth = 4            # top-1 accuracy of draft steps 1..eval_depth
  # tau (accepted draft tokens per target forward) of speculative decoding with the draft on
  # the first `prompts` held-out prompts (0: off; single-process runs), greedy, EAGLE-2 tree.
  c.eval_tau = ml_collections.ConfigDict(dict(prompts=0, max_new_tokens=64, depth=3, top_k=8,
                                              total_tokens=30))

  c.checkpoint = ml_collections.ConfigDict(dict(every=500, keep=3, use_async=True))
  c.export_draft = True       # workdir/draft: a draft folder `vj.load_draft` reads

  c.stop_at_step = placeholder(int)  # end this run early (a time-boxed job); resume later
  # Persistent XLA compilation cache shared by runs (restarts skip compiling), or None.
  c.compilation_cache = placeholder(str)

  # Tests: after that step, SIGKILL itself (a crash; once the last checkpoint is on disk) or
  # send itself SIGTERM (a preemption notice).
  c.debug = ml_collections.ConfigDict(dict(crash_after_step=-1, sigterm_after_step=-1))
  set_stage(c, 2)
  return c


def draft_config(arg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A draft experiment's start: `base_config` at `arg.stage`, the draft kind `arg.draft` when
  the arg has a non-empty one."""
  c = set_stage(base_config(), arg.stage)
  if arg.get("draft"):
    c.draft.kind = arg.draft
  return c


# The keys only the draft trainer reads (other trainers' configs drop them, `without`).
DRAFT_ONLY = ("draft", "loss", "noise", "eval_tau", "eval_depth", "export_draft")


def without(c: ml_collections.ConfigDict, *keys: str) -> ml_collections.ConfigDict:
  for key in keys:
    del c[key]
  return c


def set_stage(c: ml_collections.ConfigDict, stage: int) -> ml_collections.ConfigDict:
  """The reference's stages (vispec-reference.md 6.2): 1 = EAGLE draft, feature regression +
  soft CE + ListMLE, no extra passes; 2 = ViSpec draft, prob-L1 + ListMLE, one extra pass."""
  if stage not in (1, 2):
    raise ValueError(f"stage must be 1 or 2, got {stage}")
  weights = losses.STAGE1_WEIGHTS if stage == 1 else losses.STAGE2_WEIGHTS
  for k in c.loss.weights:
    c.loss.weights[k] = float(weights.get(k, 0.0))
  c.loss.mtp_steps = 0 if stage == 1 else 1
  c.draft.kind = "eagle" if stage == 1 else "vispec"
  return c


# ------------------------------------------------------------------------------ checks
# What the trainers and datagen can use, per key; `check` refuses anything else with one message
# naming the key (before a model is loaded). Keys a config does not have (e.g. the target
# trainer's config has no `draft`) are skipped.

def _number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _int(lo=None, hi=None, optional=False):
  def rule(v):
    if v is None and optional:
      return None
    if isinstance(v, bool) or not isinstance(v, int) or (lo is not None and v < lo) or (
        hi is not None and v > hi):
      bounds = " and ".join(b for b in (f">= {lo}" if lo is not None else "",
                                         f"<= {hi}" if hi is not None else "") if b)
      return f"must be an integer{' ' + bounds if bounds else ''}" + (" or None" if optional else "")
    return None
  return rule


def _real(lo=None, hi=None, lo_open=False, hi_open=False, optional=False):
  def rule(v):
    if v is None and optional:
      return None
    ok = _number(v) and not (lo is not None and (v <= lo if lo_open else v < lo)) and not (
        hi is not None and (v >= hi if hi_open else v > hi))
    if not ok:
      parts = [f"{'>' if lo_open else '>='} {lo}" if lo is not None else "",
               f"{'<' if hi_open else '<='} {hi}" if hi is not None else ""]
      bounds = " and ".join(p for p in parts if p)
      return f"must be a finite number{' ' + bounds if bounds else ''}" + (
          " or None" if optional else "")
    return None
  return rule


def _choice(*options):
  return lambda v: None if v in options else f"must be one of {list(options)}"


def _text(v):
  return None if isinstance(v, str) and v.strip() else "must be a non-empty string"


def _sizes(n=None, optional=False):
  """A tuple of positive integers (of length n)."""
  def rule(v):
    if v is None and optional:
      return None
    ok = isinstance(v, (tuple, list)) and len(v) > 0 and (n is None or len(v) == n) and all(
        isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in v)
    return None if ok else (f"must be {n} positive integers" if n else
                            "must be a non-empty tuple of positive integers")
  return rule


def _increasing(v):
  msg = _sizes()(v)
  return msg or (None if list(v) == sorted(set(v)) else "must be strictly increasing")


def _mesh(v):
  ok = isinstance(v, (tuple, list)) and len(v) == 3 and all(
      isinstance(x, int) and not isinstance(x, bool) and (x >= 1 or x == -1) for x in v)
  return None if ok else "must be (data, fsdp, tensor): 3 positive integers, one may be -1"


def _weights(v):
  bad = [k for k, x in dict(v).items() if not _number(x) or x < 0]
  return f"must be finite numbers >= 0 (bad: {bad})" if bad else None


def _scales(v):
  if v is None:
    return None
  if not hasattr(v, "items"):
    return "must be a dict {params path prefix: lr multiplier} or None"
  return _weights(v)


def _datagen_input(v):
  if not isinstance(v, str) or not v.strip():
    return "must be a .jsonl file, tfds:NAME:SPLIT or synthetic:N"
  if v.startswith("synthetic:"):
    n = v.split(":", 1)[1]
    return None if n.isdigit() and int(n) >= 1 else "synthetic:N needs an integer N >= 1"
  return None


def _float_dtype(v):
  return None if v in ("float32", "bfloat16", "float16") else "must be float32, bfloat16 or float16"


SEED_MAX = 2**32 - 1  # jax.random.PRNGKey keeps 32 bits
RULES = {
    "seed": _int(0, SEED_MAX),
    "target.folder": _text, "target.dtype": _choice("float32", "bfloat16"),
    "draft.kind": _choice("eagle", "vispec", "medusa"), "draft.dtype": _choice("float32", "bfloat16"),
    "datagen.input": _datagen_input, "datagen.image_size": _sizes(2, optional=True),
    "datagen.image_position": _choice("after", "before", "mixed"),
    "datagen.max_new_tokens": _int(1), "datagen.batch_size": _int(1), "datagen.chunk_size": _int(1),
    "datagen.feature_dtype": _float_dtype, "datagen.num_workers": _int(1),
    "datagen.worker": _int(0), "datagen.question_key": _text, "datagen.image_key": _text,
    "datagen.overwrite": _choice(False, True),
    "data.dir": _text, "data.name": _text, "data.features": _choice("online", "precomputed"),
    "data.max_len": _int(1), "data.buckets": _increasing, "data.eval_fraction": _real(0, 1, hi_open=True),
    "data.shuffle_seed": _int(0, SEED_MAX), "data.worker_count": _int(0), "data.prefetch": _int(0),
    "data.limit": _int(1, optional=True), "data.mix.weight": _real(0, 1, hi_open=True),
    "batch_size": _int(1), "num_epochs": _real(0, lo_open=True), "total_steps": _int(1, optional=True),
    "warmup_epochs": _real(0), "warmup_steps": _int(0, optional=True),
    "optim.lr": _real(0), "optim.b1": _real(0, 1, hi_open=True), "optim.b2": _real(0, 1, hi_open=True),
    "optim.eps": _real(0, lo_open=True), "optim.weight_decay": _real(0),
    "optim.clip_value": _real(0, optional=True), "optim.clip_norm": _real(0, optional=True),
    "optim.lr_scales": _scales,
    "loss.weights": _weights, "loss.mtp_steps": _int(0), "loss.mask_offset": _int(0),
    "noise.scale": _real(0), "noise.ref_len": _int(1),
    "mesh": _mesh,
    "log_every": _int(1), "eval_every": _int(0), "eval_batches": _int(1), "eval_depth": _int(1),
    "eval_tau.prompts": _int(0), "eval_tau.max_new_tokens": _int(1), "eval_tau.depth": _int(1),
    "eval_tau.top_k": _int(1), "eval_tau.total_tokens": _int(2),
    "checkpoint.every": _int(1), "checkpoint.keep": _int(1),
    "stop_at_step": _int(1, optional=True),
    "scene_word_weight": _real(0, lo_open=True),
    "heldout.scenes": _int(1), "heldout.max_new_tokens": _int(1), "heldout.batch_size": _int(1),
    "export.dtype": _choice("float32", "bfloat16", "float16"),
}


def _lookup(config, key: str):
  node = config
  for part in key.split("."):
    if not hasattr(node, "keys") or part not in node.keys():
      raise KeyError(key)
    node = node[part]
  return node


def check(config) -> None:
  """Refuses a config value the trainers or datagen cannot use: a ValueError naming the key
  (`config.batch_size must be an integer >= 1, got 0`). Cheap; run before loading anything."""
  for key, rule in RULES.items():
    try:
      value = _lookup(config, key)
    except KeyError:
      continue
    message = rule(value)
    if message:
      raise ValueError(f"config.{key} {message}, got {value!r}")
  dg = config.get("datagen")
  if dg is not None and dg.worker >= dg.num_workers:
    raise ValueError(f"config.datagen.worker must be < datagen.num_workers ({dg.num_workers}), "
                     f"got {dg.worker}")
  mix = (config.get("data") or {}).get("mix") or {}
  if mix.get("weight", 0.0) > 0 and not mix.get("name"):
    raise ValueError(f"config.data.mix.weight is {mix['weight']} but data.mix.name is unset")
  unknown = sorted(set(mix.get("datagen") or {}) - set(dg or {}))
  if unknown:
    raise ValueError(f"config.data.mix.datagen overrides unknown datagen keys {unknown}")
