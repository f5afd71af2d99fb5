"""The draft trainer (big_vision style): the frozen target runs in the jitted step (or datagen's
stored features), the draft and its AdamW state are sharded by the logical-axis rules, and
`train/loop.py` runs the loop (logging, eval, orbax checkpoints, exact resume). At the end,
workdir/draft is a folder `vj.load_draft` reads. The whole recipe: docs/training.md.

    python -m train --config configs/tiny_qwen.py --workdir /tmp/run [--config.key=value ...]
"""

from __future__ import annotations

import dataclasses
import functools
import os

import jax
import numpy as np
from absl import logging
from PIL import Image

from configs import common
from train import data, datagen, loop, model, sharding, targets
import vispec_jax as vj
from vispec_jax import draft as draft_lib
from vispec_jax.target import batch_from_rows


def make_draft_config(config, target) -> vj.DraftConfig:
  overrides = dict(config.draft.overrides)
  if config.draft.kind != "vispec":  # ViSpec-only fields keep their defaults
    overrides.pop("num_q", None)
    overrides.pop("global_feature", None)
  return vj.DraftConfig.for_target(target.config.text, kind=config.draft.kind, **overrides)


def init_draft_params(config, dcfg, target, key):
  """Fresh params, or those of `draft.init_from` (a stage-1 EAGLE draft fills a ViSpec draft's
  fc and layer; the adaptor and img_fc keep their fresh init, as the reference's strict=False)."""
  dtype = targets.DTYPES[config.draft.dtype]
  params = draft_lib.init_params(dcfg, key, dtype)
  if config.draft.init_from:
    loaded = vj.load_draft(config.draft.init_from, target, dtype=dtype)
    if loaded.config.kind == dcfg.kind:
      return loaded.params
    if loaded.config.kind == "eagle" and dcfg.kind == "vispec":
      params.update({k: loaded.params[k] for k in ("fc", "layer")})
      return params
    raise ValueError(f"cannot start a {dcfg.kind} draft from a {loaded.config.kind} draft "
                     f"({config.draft.init_from})")
  return params


def make_spec(config, target, dcfg, meta) -> model.Spec:
  precomputed = config.data.features == "precomputed"
  if precomputed and not meta.get("feature_dim"):
    raise ValueError("data.features='precomputed' but the dataset has no stored features "
                     "(generate it with datagen.store_features=True)")
  vision = (targets.VisionAdapter.for_target(target, meta["image_hw"])
            if meta.get("image_hw") and not precomputed else None)
  return model.Spec(
      drafter=vj.make_drafter(dcfg), text=target.config.text,
      weights=tuple(sorted((k, float(v)) for k, v in config.loss.weights.items())),
      mtp_steps=int(config.loss.mtp_steps), mask_offset=int(config.loss.mask_offset),
      noise_scale=float(config.noise.scale), noise_ref_len=int(config.noise.ref_len),
      noise_per_length=bool(config.noise.per_length), vision=vision, precomputed=precomputed)


def train_step(spec, tx, seed, state, batch, target_params):
  """One optimizer step. state = {"params", "opt_state", "step"}."""
  key = jax.random.fold_in(jax.random.PRNGKey(seed), state["step"])
  head = draft_lib.head_params(target_params["text"])
  f, embeds = model.target_features(spec, target_params, batch)
  return loop.grad_step(tx, lambda p: model.loss_fn(spec, p, head, f, embeds, batch, key), state)


def eval_step(spec, depth, params, batch, target_params):
  head = draft_lib.head_params(target_params["text"])
  f, embeds = model.target_features(spec, target_params, batch)
  quiet = dataclasses.replace(spec, noise_scale=0.0)
  _, metrics = model.loss_fn(quiet, params, head, f, embeds, batch, jax.random.PRNGKey(0))
  out = {"loss": metrics["loss"], **{k: v for k, v in metrics.items() if k.startswith("loss/")}}
  out.update(model.depth_accuracy(spec, params, head, f, embeds, batch, depth))
  return out


def speculative_tau(config, target, dcfg, params, records, image_hw) -> dict:
  """tau of greedy speculative decoding (`vj.speculative_generate`) with the draft on held-out
  prompts: each record's prompt (and image) without its answer, one batch."""
  rows = [np.asarray(r["tokens"][:int(r["prompt_length"])], np.int32) for r in records]
  items = [[target.family.preprocess_image(target.image_processor, target.config,
                                           Image.fromarray(np.asarray(r["image"])))]
           if image_hw and int(r.get("has_image", 0)) else [] for r in records]
  batch = batch_from_rows(target, rows, items)
  t = config.eval_tau
  tree = vj.TreeConfig(depth=t.depth, top_k=t.top_k, total_tokens=t.total_tokens)
  out = vj.speculative_generate(target, vj.make_drafter(dcfg), params, batch, tree=tree,
                                max_new_tokens=t.max_new_tokens)
  stats = jax.device_get(out.stats)
  accepted, forwards = np.sum(stats.accepted), np.sum(stats.target_forwards)
  return {"eval/tau": float(accepted / max(forwards, 1)),
          "eval/tokens_per_forward": float((accepted + forwards) / max(forwards, 1))}


def train(config, workdir: str) -> dict:
  """Trains a draft; returns {"step", "metrics": last logged, "eval": last eval, "draft"}. The
  config is checked first; the workdir is locked while it runs (`loop.workdir_lock`)."""
  common.check(config)
  with loop.workdir_lock(workdir):
    return _train(config, workdir)


def _train(config, workdir: str) -> dict:
  mesh = loop.setup_mesh(config)
  rules = sharding.rules(config.sharding.rules)
  logging.info("mesh %s over %d devices, %d processes", dict(mesh.shape), mesh.size,
               jax.process_count())

  # The frozen target, loaded straight into the library's sharded layout (or resharded below
  # when this experiment overrides the rules).
  target = targets.load_target(config.target.folder, config.target.dtype,
                               config.target.get("cache_dir"),
                               mesh=None if config.sharding.rules else mesh)
  records = data.Records(config, datagen.dataset_dir(config))
  dcfg = make_draft_config(config, target)
  spec = make_spec(config, target, dcfg, records.meta)
  collate = data.Collator.for_target(config, target, spec.vision, spec.precomputed)

  host_params = init_draft_params(config, dcfg, target, jax.random.PRNGKey(config.seed))
  run = loop.Run.create(config, workdir, mesh, host_params,
                        sharding.param_shardings(host_params, mesh, dcfg.head_dim, rules),
                        records.train_iter(collate), records.total, records.warmup)
  target_params = target.params
  if spec.precomputed:  # only the embedding and lm_head are needed
    target_params = {"text": draft_lib.head_params(target_params["text"])}
  if config.sharding.rules:
    target_params = loop.put_global(target_params, sharding.param_shardings(
        target_params, mesh, sharding.head_dims(target.config), rules))

  step_fn = run.jit_step(functools.partial(train_step, spec, run.tx, config.seed))
  eval_fn = run.jit_eval(functools.partial(eval_step, spec, config.eval_depth))

  def evaluate(state, step):
    del step
    ds = records.dataset(collate, train=False)
    rows = [jax.device_get(eval_fn(state["params"], loop.device_batch(mesh, ds[i]), target_params))
            for i in range(config.eval_batches)]
    out = {f"eval/{k}": sum(float(r[k]) for r in rows) / len(rows) for k in rows[0]}
    if config.eval_tau.prompts and jax.process_count() == 1:
      held = [records.source[int(i)] for i in records.held[:config.eval_tau.prompts]]
      out.update(speculative_tau(config, target, dcfg, jax.device_get(state["params"]), held,
                                 records.meta.get("image_hw")))
    return out

  state, step, last, last_eval = run.fit(step_fn, evaluate, step_args=(target_params,))
  out = {"step": step, "metrics": last, "eval": last_eval, "draft": None}
  if step == run.total and config.export_draft:
    host = loop.to_host(state["params"])
    folder = os.path.join(workdir, "draft")
    if jax.process_index() == 0:
      vj.save_draft(folder, dcfg, host)
    out["draft"] = folder
  return out
