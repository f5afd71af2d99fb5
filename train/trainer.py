"""The draft trainer: one readable loop (big_vision style).

    python -m train --config configs/tiny_qwen.py --workdir /tmp/run [--config.key=value ...]

  mesh (data, fsdp, tensor)                     train/sharding.py, config.mesh
  frozen target, sharded, run online            train/model.py:target_features (or the
                                                features datagen stored: data.features)
  draft params + AdamW state, sharded           logical axis rules, train/sharding.py
  batches                                       train/data.py (grain), this process's rows
  train_step (jit, donated state)               noise -> draft passes -> losses -> clip -> AdamW
  every log_every steps                         metrics to stdout, workdir/metrics.jsonl, bar
  every eval_every steps                        top-1 accuracy of draft steps 1..eval_depth
  every checkpoint.every steps, and on SIGTERM  orbax: params, optimizer state, step, and the
                                                data iterator's position (async, keep N)
  at the end                                    workdir/draft: a folder `vj.load_draft` reads

A restarted run continues from the newest checkpoint exactly: same params, optimizer state, noise
(keyed by step) and next batch.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from train import data, datagen, model, sharding, targets
import vispec_jax as vj
from vispec_jax import draft as draft_lib


# ----------------------------------------------------------------------------- setup


def make_draft_config(config, target) -> vj.DraftConfig:
  overrides = dict(config.draft.overrides)
  if config.draft.kind != "vispec":
    overrides.pop("num_q", None)
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


def schedule(config, total_steps: int, warmup: int):
  """Linear warmup to optim.lr, then linear decay to 0 at the last step."""
  lr = config.optim.lr
  warmup = max(0, min(warmup, total_steps))
  return optax.join_schedules(
      [optax.linear_schedule(0.0, lr, max(warmup, 1)),
       optax.linear_schedule(lr, 0.0, max(total_steps - warmup, 1))], [warmup])


def make_optimizer(config, sched) -> optax.GradientTransformation:
  """Gradient clipping (by value, the reference's 0.5; and/or by global norm), then AdamW."""
  o = config.optim
  parts = []
  if o.clip_value:
    parts.append(optax.clip(o.clip_value))
  if o.clip_norm:
    parts.append(optax.clip_by_global_norm(o.clip_norm))
  parts.append(optax.adamw(sched, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay))
  return optax.chain(*parts)


def put_global(tree, shardings):
  """Host values (the same on every process) -> global arrays with the given shardings."""
  def one(x, s):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, s, lambda idx: x[idx])
  return jax.tree.map(one, tree, shardings)


def to_host(tree):
  """Global arrays -> NumPy on every process (gathers shards other processes hold)."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  return multihost_utils.process_allgather(tree, tiled=True)


def target_head_dims(cfg) -> dict[str, int]:
  """Head size per params subtree (a head is never split across devices)."""
  dims = {"text": cfg.text.head_dim}
  vision = cfg.vision
  if vision is not None:
    dims["vision"] = getattr(vision, "clip", vision).head_dim
  return dims


def make_spec(config, target, dcfg, meta) -> model.Spec:
  precomputed = config.data.features == "precomputed"
  if config.data.features not in ("online", "precomputed"):
    raise ValueError(f"data.features must be 'online' or 'precomputed', got "
                     f"{config.data.features!r}")
  if precomputed and not meta.get("feature_dim"):
    raise ValueError("data.features='precomputed' but the dataset has no stored features "
                     "(generate it with datagen.store_features=True)")
  vision = None
  if meta.get("image_hw") and not precomputed:
    vision = targets.VisionAdapter.for_target(target, meta["image_hw"])
  return model.Spec(
      drafter=vj.make_drafter(dcfg), text=target.config.text,
      weights=tuple(sorted((k, float(v)) for k, v in config.loss.weights.items())),
      mtp_steps=int(config.loss.mtp_steps), mask_offset=int(config.loss.mask_offset),
      noise_scale=float(config.noise.scale), noise_ref_len=int(config.noise.ref_len),
      noise_per_length=bool(config.noise.per_length), vision=vision, precomputed=precomputed,
      mrope=target.config.text.mrope_section is not None)


# ------------------------------------------------------------------------------ steps


def train_step(spec, tx, seed, state, batch, target_params):
  """One optimizer step. state = {"params", "opt_state", "step"}."""
  key = jax.random.fold_in(jax.random.PRNGKey(seed), state["step"])
  head = model.head_params(target_params)
  f, embeds = model.target_features(spec, target_params, batch)

  def loss(params):
    return model.loss_fn(spec, params, head, f, embeds, batch, key)

  (_, metrics), grads = jax.value_and_grad(loss, has_aux=True)(state["params"])
  updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
  params = optax.apply_updates(state["params"], updates)
  metrics["grad_norm"] = optax.global_norm(grads)
  new = {"params": params, "opt_state": opt_state, "step": state["step"] + 1}
  return new, metrics


def eval_step(spec, depth, params, batch, target_params):
  head = model.head_params(target_params)
  f, embeds = model.target_features(spec, target_params, batch)
  quiet = dataclasses.replace(spec, noise_scale=0.0)
  _, metrics = model.loss_fn(quiet, params, head, f, embeds, batch, jax.random.PRNGKey(0))
  out = {"loss": metrics["loss"], **{k: v for k, v in metrics.items() if k.startswith("loss/")}}
  out.update(model.depth_accuracy(spec, params, head, f, embeds, batch, depth))
  return out


def speculative_tau(config, target, dcfg, params, records, image_hw) -> dict:
  """tau of greedy speculative decoding (`vj.speculative_generate`) with the draft on held-out
  prompts: each record's prompt (and image) without its answer, one batch."""
  from PIL import Image
  rows, items = [], []
  for rec in records:
    rows.append(np.asarray(rec["tokens"][:int(rec["prompt_length"])], np.int32))
    its = []
    if image_hw and int(rec.get("has_image", 0)):
      its.append(target.family.preprocess_image(target.image_processor, target.config,
                                                Image.fromarray(np.asarray(rec["image"]))))
    items.append(its)
  batch = datagen.rows_to_batch(target, rows, items)
  t = config.eval_tau
  tree = vj.TreeConfig(depth=t.depth, top_k=t.top_k, total_tokens=t.total_tokens)
  out = vj.speculative_generate(target, vj.make_drafter(dcfg), params, batch, tree=tree,
                                max_new_tokens=t.max_new_tokens)
  stats = jax.device_get(out.stats)
  return {"eval/tau": float(np.sum(stats.accepted) / max(np.sum(stats.target_forwards), 1)),
          "eval/tokens_per_forward": float(
              (np.sum(stats.accepted) + np.sum(stats.target_forwards))
              / max(np.sum(stats.target_forwards), 1))}


# ---------------------------------------------------------------------------- logging


class Logger:
  """Metrics to stdout and workdir/metrics.jsonl (process 0), plus a progress bar."""

  def __init__(self, workdir: str, total: int, start: int, progress: bool):
    self.main = jax.process_index() == 0
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.bar = None
    if self.main and progress:
      from tqdm import tqdm
      self.bar = tqdm(total=total, initial=start, unit="step", desc="train", dynamic_ncols=True)

  def write(self, step: int, metrics: dict[str, Any]) -> None:
    if not self.main:
      return
    row = {"step": step, **{k: _scalar(v) for k, v in metrics.items()}}
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")
    shown = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in row.items() if k not in ("ids",))
    if self.bar is not None:
      self.bar.write(shown)
    else:
      print(shown, flush=True)

  def advance(self, n: int, postfix: dict | None = None) -> None:
    if self.bar is not None:
      if postfix:
        self.bar.set_postfix(postfix, refresh=False)
      self.bar.update(n)

  def close(self):
    if self.bar is not None:
      self.bar.close()


def _scalar(v):
  if isinstance(v, (list, tuple)):
    return list(v)
  a = np.asarray(v)
  if a.ndim:
    return a.tolist()
  return a.item() if a.dtype.kind in "iub" else float(a)


# ------------------------------------------------------------------------------ train


def train(config, workdir: str) -> dict:
  """Trains a draft; returns {"step", "metrics": last logged, "eval": last eval, "draft"}."""
  os.makedirs(workdir, exist_ok=True)
  if config.compilation_cache:
    jax.config.update("jax_compilation_cache_dir", config.compilation_cache)
  pid, nproc = jax.process_index(), jax.process_count()
  mesh = sharding.make_mesh(config.mesh)
  rules = sharding.rules(config.sharding.rules)
  if config.batch_size % sharding.batch_divisor(mesh):
    raise ValueError(f"batch_size {config.batch_size} is not a multiple of the "
                     f"{sharding.batch_divisor(mesh)} devices the batch is split over")
  logging.info("mesh %s over %d devices, %d processes", dict(mesh.shape), mesh.size, nproc)

  # The frozen target, loaded straight into the library's sharded layout (or resharded below
  # when this experiment overrides the rules).
  target = targets.load_target(config.target.folder, config.target.dtype,
                               config.target.get("cache_dir"),
                               mesh=None if config.sharding.rules else mesh)
  source, meta = data.open_dataset(datagen.dataset_dir(config))
  if config.data.limit:  # e.g. overfitting checks
    source = data.Subset(source, config.data.limit)
    meta = dict(meta, lengths=meta["lengths"][:config.data.limit])
  dcfg = make_draft_config(config, target)
  spec = make_spec(config, target, dcfg, meta)

  # Data: train split shuffled per epoch, eval split in order.
  train_idx, eval_idx = data.split(len(source), config.data.eval_fraction)
  steps_per_epoch = max(1, len(train_idx) // config.batch_size)
  total = int(config.total_steps or config.num_epochs * steps_per_epoch)
  warmup = int(config.warmup_steps if config.warmup_steps is not None
               else config.warmup_epochs * steps_per_epoch)
  collate = data.Collator(
      pad_id=target.config.pad_token_id, max_len=config.data.max_len, vision=spec.vision,
      vision_token_ids=tuple(t for t in (target.config.image_token_id,
                                         target.config.video_token_id) if t is not None),
      precomputed=spec.precomputed)
  common = dict(global_batch=config.batch_size, buckets=config.data.buckets,
                process_index=pid, process_count=nproc)
  train_ds = data.make_dataset(source, meta["lengths"], train_idx, collate,
                               seed=config.data.shuffle_seed, num_epochs=None, **common)
  train_iter = data.to_iterator(train_ds, config.data.worker_count, config.data.prefetch)

  # Params and optimizer state, sharded by the logical axis rules.
  sched = schedule(config, total, warmup)
  tx = make_optimizer(config, sched)
  host_params = init_draft_params(config, dcfg, target, jax.random.PRNGKey(config.seed))
  param_sh = sharding.param_shardings(host_params, mesh, dcfg.head_dim, rules)
  params = put_global(host_params, param_sh)
  repl = sharding.replicated(mesh)
  opt_sh = optax.tree_map_params(tx, lambda _, s: s, jax.eval_shape(tx.init, host_params),
                                 param_sh, transform_non_params=lambda _: repl)
  opt_state = jax.jit(tx.init, out_shardings=opt_sh)(params)
  state = {"params": params, "opt_state": opt_state, "step": jnp.zeros((), jnp.int32)}
  state_sh = {"params": param_sh, "opt_state": opt_sh, "step": repl}
  state = jax.device_put(state, state_sh)
  target_params = target.params
  if spec.precomputed:  # only the embedding and lm_head are needed
    target_params = {"text": model.head_params(target_params)}
  if config.sharding.rules:
    target_params = put_global(target_params, sharding.param_shardings(
        target_params, mesh, target_head_dims(target.config), rules))

  # Checkpoints: resume from the newest one.
  mngr = ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), "checkpoints"),
      options=ocp.CheckpointManagerOptions(
          max_to_keep=config.checkpoint.keep, save_interval_steps=config.checkpoint.every,
          enable_async_checkpointing=config.checkpoint.use_async, create=True),
      item_names=("state", "data"))
  start = 0
  if mngr.latest_step() is not None:
    start = int(mngr.latest_step())
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                            state)
    restored = mngr.restore(start, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()))
    state = restored["state"]
    train_iter.set_state(restored["data"])
    logging.info("resumed from step %d", start)

  step_fn = jax.jit(functools.partial(train_step, spec, tx, config.seed),
                    out_shardings=(state_sh, repl), donate_argnums=(0,))
  eval_fn = jax.jit(functools.partial(eval_step, spec, config.eval_depth), out_shardings=repl)

  def device_batch(batch):
    batch = {k: v for k, v in batch.items() if k not in data.HOST_KEYS}
    return {k: jax.make_array_from_process_local_data(sharding.batch_sharding(mesh, v.ndim), v)
            for k, v in batch.items()}

  def evaluate():
    ds = data.make_dataset(source, meta["lengths"], eval_idx if len(eval_idx) else train_idx,
                           collate, seed=None, num_epochs=None, **common)
    sums, n = {}, 0
    for i in range(config.eval_batches):
      out = jax.device_get(eval_fn(state["params"], device_batch(ds[i]), target_params))
      for k, v in out.items():
        sums[k] = sums.get(k, 0.0) + float(v)
      n += 1
    out = {f"eval/{k}": v / max(n, 1) for k, v in sums.items()}
    if config.eval_tau.prompts and nproc == 1:
      held = eval_idx if len(eval_idx) else train_idx
      records = [source[int(i)] for i in held[:config.eval_tau.prompts]]
      out.update(speculative_tau(config, target, dcfg, jax.device_get(state["params"]), records,
                                 meta.get("image_hw")))
    return out

  def save_now():
    mngr.wait_until_finished()
    if mngr.latest_step() != step:
      mngr.save(step, force=True, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(train_iter.get_state())))

  stop = {"sigterm": False}
  import threading  # pylint: disable=import-outside-toplevel
  in_main = threading.current_thread() is threading.main_thread()  # signals need the main thread
  previous = signal.signal(signal.SIGTERM, lambda *_: stop.update(sigterm=True)) if in_main else None
  logger = Logger(workdir, total, start, config.progress and pid == 0)
  step, last, last_eval = start, {}, {}
  pending, t_log, tokens = [], time.time(), 0
  end = min(total, config.stop_at_step or total)
  try:
    while step < end:
      batch = next(train_iter)
      ids = batch["global_index"].tolist()
      tokens += int(batch["global_tokens"])
      dbatch = device_batch(batch)
      if step == start:  # compile up front: report the compile time and memory per device
        t0 = time.time()
        mem = step_fn.lower(state, dbatch, target_params).compile().memory_analysis()
        info = {"compile_s": time.time() - t0}
        if mem is not None:
          info["memory_per_device_mb"] = (mem.argument_size_in_bytes + mem.output_size_in_bytes
                                          + mem.temp_size_in_bytes - mem.alias_size_in_bytes) / 2**20
        logging.info("train step: %s", info)
        logger.write(step, info)
        t_log = time.time()
      state, metrics = step_fn(state, dbatch, target_params)
      step += 1
      pending.append((step, metrics, ids))
      if step % config.log_every == 0 or step == total:
        rate = tokens / max(time.time() - t_log, 1e-9)  # includes waiting for the results
        for s, m, i in jax.device_get(pending):
          row = dict(m, lr=float(sched(s - 1)))
          if config.log_sample_ids:
            row["ids"] = i
          if s == step:
            row["tokens_per_s"] = rate
          logger.write(s, row)
          last = row
        logger.advance(len(pending), {"loss": f"{last['loss']:.4g}", "tok/s": f"{rate:.0f}"})
        pending, t_log, tokens = [], time.time(), 0
      if config.eval_every and (step % config.eval_every == 0 or step == total):
        last_eval = evaluate()
        logger.write(step, last_eval)
      mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                              data=ocp.args.JsonSave(train_iter.get_state())))
      if step == config.debug.crash_after_step:  # tests: die like a lost machine
        mngr.wait_until_finished()
        os.kill(os.getpid(), signal.SIGKILL)
      if step == config.debug.sigterm_after_step:  # tests: a preemption notice
        os.kill(os.getpid(), signal.SIGTERM)
      sigterm = stop["sigterm"]
      if nproc > 1:
        sigterm = bool(np.any(multihost_utils.process_allgather(np.asarray(sigterm))))
      if sigterm:
        logging.warning("SIGTERM: saving step %d and stopping", step)
        save_now()
        break
    if step == end and end < total:  # time-boxed run: leave a checkpoint to resume from
      save_now()
    mngr.wait_until_finished()
  finally:
    if in_main:
      signal.signal(signal.SIGTERM, previous)
    logger.close()
  if pending:  # stopped between two log steps
    for s, m, i in jax.device_get(pending):
      logger.write(s, dict(m))
  out = {"step": step, "metrics": last, "eval": last_eval, "draft": None}
  if step == total and config.export_draft:
    host = to_host(state["params"])
    folder = os.path.join(workdir, "draft")
    if pid == 0:
      vj.save_draft(folder, dcfg, host)
    out["draft"] = folder
  mngr.close()
  return out
