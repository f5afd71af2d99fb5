"""Defaults every training config starts from, and the `arg` parser of `get_config(arg)`.

Every key the trainer and datagen read is listed here with its meaning, so a config file only
states what it changes. Units: steps are optimizer steps; batch sizes are global (all hosts).
"""

from __future__ import annotations

import ml_collections
from ml_collections.config_dict import placeholder

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
  # overrides: DraftConfig fields other than the target-derived shapes (num_q, medusa_heads).
  c.draft = ml_collections.ConfigDict(dict(
      kind="vispec", init_from=placeholder(str), dtype="float32",
      overrides=ml_collections.ConfigDict(dict(num_q=2))))

  # Data generation (python -m train.datagen). image_position: the image "after" the question
  # (the reference), "before" it (as vj.prepare places it) or "mixed" (alternating by input).
  c.datagen = ml_collections.ConfigDict(dict(
      input="synthetic:16", image_size=(224, 224), system_prompt=REFERENCE_SYSTEM,
      instruction=REFERENCE_INSTRUCTION, image_position="after", max_new_tokens=1024,
      batch_size=8, chunk_size=64,
      store_features=False, feature_dtype="float32", worker=0, num_workers=1, progress=True,
      question_key="question", image_key="image", answer_key=placeholder(str),
      crash_after_chunks=-1,  # tests: SIGKILL after that many chunks
      tfds_data_dir=placeholder(str)))

  # Training data: the TFDS dataset datagen wrote (data.dir / vispec_draft_data / data.name).
  # features: "online" (run the target in the train step) or "precomputed" (records hold the
  # target's features, datagen.store_features). Sequences are cut to max_len and padded to the
  # smallest bucket holding the longest sequence of the global batch.
  c.data = ml_collections.ConfigDict(dict(
      dir="/tmp/vispec_data", name="default", features="online", max_len=4096,
      buckets=(256, 512, 1024, 2048, 4096), eval_fraction=0.05, shuffle_seed=0,
      worker_count=0, prefetch=2, limit=placeholder(int)))  # limit: first N records only

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
      lr_scales=placeholder(object)))  # {top-level params key: lr multiplier}, e.g. {"vision": 0.1}

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


def set_stage(c: ml_collections.ConfigDict, stage: int) -> ml_collections.ConfigDict:
  """The reference's stages (vispec-reference.md 6.2): 1 = EAGLE draft, feature regression +
  soft CE + ListMLE, no extra passes; 2 = ViSpec draft, prob-L1 + ListMLE, one extra pass."""
  from train import losses  # pylint: disable=import-outside-toplevel
  if stage not in (1, 2):
    raise ValueError(f"stage must be 1 or 2, got {stage}")
  weights = losses.STAGE1_WEIGHTS if stage == 1 else losses.STAGE2_WEIGHTS
  for k in c.loss.weights:
    c.loss.weights[k] = float(weights.get(k, 0.0))
  c.loss.mtp_steps = 0 if stage == 1 else 1
  c.draft.kind = "eagle" if stage == 1 else "vispec"
  return c
