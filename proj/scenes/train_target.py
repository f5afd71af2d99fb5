"""Trains the scenes target from scratch: a Qwen2.5-VL-architecture VLM (our port) that reads a
scene image and a question and writes the long answer; cross-entropy on answer tokens only.

    python -m proj.scenes.train_target --config proj/scenes/configs/target.py --workdir DIR [--config.key=value]
    python -m proj.scenes.train_target --config proj/scenes/configs/target.py --workdir DIR --export_only

  tokenizer            config.tokenizer (`python -m proj.scenes.generator tokenizer`)
  workdir/init         config.json from config.model + random weights (config.seed), the
                       tokenizer and processor: the folder datagen reads, written once
  records              train.datagen over the scenes TFDS split, keeping its answers
  batches, mesh, AdamW, checkpoints, logging, the loop     shared with the draft trainer
                       (train/data.py, train/loop.py)
  train_step           train/lm.py:answer_loss -> grads -> clip -> AdamW
  every eval_every     loss and token accuracy on held-out records (the last data.eval_fraction),
                       also with every row given another row's image (`eval/*_swapped`)
  at the end, or with --export_only (newest checkpoint)
                       workdir/target: an HF-style folder (`vj.load_target`, `infer.generate`),
                       then the held-out check on validation scenes (proj/scenes/target_eval.py),
                       written to workdir/heldout.json

A restarted run resumes from the newest checkpoint (params, AdamW state, next batch).
"""

from __future__ import annotations

import functools
import json
import os

import jax
import numpy as np
import optax
from absl import flags, logging
from ml_collections import config_flags

from configs import common
from train import cli, data, datagen, lm, loop, sharding, targets
from proj.scenes import target_eval, target_folder
import vispec_jax as vj
from vispec_jax.configs import TargetConfig
from vispec_jax import models


def init_folder(config, workdir: str, tokenizer) -> str:
  """workdir/init: config.json from `config.model`, random weights (`config.seed`), tokenizer and
  processor. Written once; a later run (resume) reads the same folder."""
  folder = os.path.join(workdir, "init")
  raw = target_folder.hf_config(tokenizer, config.model)
  path = os.path.join(folder, "config.json")
  if os.path.isfile(path):
    with open(path) as f:
      if json.load(f) != json.loads(json.dumps(raw)):
        raise ValueError(f"{path} was written for other model dimensions or another tokenizer "
                         "than this config's; use another workdir")
  else:
    fresh = vj.init_target(models.config_from_hf(raw), jax.random.PRNGKey(config.seed))
    target_folder.write(folder, raw, jax.device_get(fresh.params),
                        fresh.family.name_map(fresh.config), tokenizer)
  return folder


def train_step(text_cfg, vision, tx, state, batch):
  """One optimizer step on the answer tokens' cross-entropy."""
  def loss(params):
    return lm.answer_loss(text_cfg, vision, params, batch)

  (_, metrics), grads = jax.value_and_grad(loss, has_aux=True)(state["params"])
  metrics["grad_norm"] = optax.global_norm(grads)
  return loop.apply_gradients(tx, state, grads), metrics


def export(config, workdir: str, target, params, tokenizer) -> str:
  """workdir/target: the trained params as an HF-style folder (config.export.dtype storage)."""
  with open(os.path.join(target.folder, "config.json")) as f:
    raw = json.load(f)
  dtype = None if config.export.dtype == "float32" else np.dtype(targets.DTYPES[config.export.dtype])
  return target_folder.write(os.path.join(workdir, "target"), raw, params,
                             target.family.name_map(target.config), tokenizer, dtype=dtype)


def heldout(config, workdir: str, folder: str) -> dict:
  """The held-out check of an exported folder, also written to workdir/heldout.json."""
  h = config.heldout
  inputs = datagen.load_inputs(h.input, config.datagen)
  out = target_eval.evaluate(vj.load_target(folder), inputs, h.scenes, h.max_new_tokens,
                             h.batch_size)
  with open(os.path.join(workdir, "heldout.json"), "w") as f:
    json.dump(out, f, indent=1)
  return out


def train(config, workdir: str, export_only: bool = False) -> dict:
  """Trains (or, with `export_only`, restores the newest checkpoint); exports and checks the
  model when the run is complete or `export_only`. Returns {"step", "metrics", "eval",
  "target" (folder or None), "heldout"}. The config is checked first (configs/common.py:check);
  the workdir is locked while it runs (a second run on it fails at once: loop.workdir_lock)."""
  common.check(config)
  with loop.workdir_lock(workdir):
    return _train(config, workdir, export_only)


def _train(config, workdir: str, export_only: bool) -> dict:
  if config.compilation_cache:
    jax.config.update("jax_compilation_cache_dir", config.compilation_cache)
  mesh = sharding.make_mesh(config.mesh)
  rules = sharding.rules(config.sharding.rules)
  if config.batch_size % sharding.batch_divisor(mesh):
    raise ValueError(f"batch_size {config.batch_size} is not a multiple of the "
                     f"{sharding.batch_divisor(mesh)} devices the batch is split over")

  tokenizer = target_folder.load_tokenizer(config.tokenizer)
  target = vj.load_target(init_folder(config, workdir, tokenizer))
  config.target.folder = target.folder
  source, meta = data.open_dataset(datagen.run(config) or datagen.dataset_dir(config))
  if config.data.limit:
    source = data.Subset(source, config.data.limit)
    meta = dict(meta, lengths=meta["lengths"][:config.data.limit])
  vision = targets.VisionAdapter.for_target(target, meta["image_hw"])
  text_cfg = target.config.text

  train_idx, eval_idx = data.split(len(source), config.data.eval_fraction)
  steps_per_epoch = max(1, len(train_idx) // config.batch_size)
  total = int(config.total_steps or config.num_epochs * steps_per_epoch)
  warmup = int(config.warmup_steps if config.warmup_steps is not None
               else config.warmup_epochs * steps_per_epoch)
  collate = data.Collator(pad_id=target.config.pad_token_id, max_len=config.data.max_len,
                          vision=vision, vision_token_ids=(target.config.image_token_id,))
  common = dict(global_batch=config.batch_size, buckets=config.data.buckets,
                process_index=jax.process_index(), process_count=jax.process_count())
  train_iter = data.to_iterator(
      data.make_dataset(source, meta["lengths"], train_idx, collate,
                        seed=config.data.shuffle_seed, num_epochs=None, **common),
      config.data.worker_count, config.data.prefetch)

  sched = loop.schedule(config, total, warmup)
  tx = loop.make_optimizer(config, sched)
  host_params = jax.device_get(target.params)
  param_sh = sharding.param_shardings(host_params, mesh, sharding.head_dims(target.config), rules)
  state, state_sh = loop.init_state(tx, host_params, param_sh, mesh)
  mngr = loop.checkpoint_manager(workdir, config)
  state, start = loop.restore_latest(mngr, state, train_iter)
  logging.info("target: %.2fM params, %d records (%d held out), %d steps of %d",
               sum(x.size for x in jax.tree.leaves(host_params)) / 1e6, len(source),
               len(eval_idx), total, config.batch_size)

  repl = sharding.replicated(mesh)
  step_fn = jax.jit(functools.partial(train_step, text_cfg, vision, tx),
                    out_shardings=(state_sh, repl), donate_argnums=(0,))
  eval_fn = jax.jit(lambda p, b: lm.answer_loss(text_cfg, vision, p, b)[1], out_shardings=repl)

  def evaluate(state, step):
    """Loss and token accuracy on held-out batches, with each row's own image and with the
    images rotated by one row (`_swapped`): the gap is what the model reads from the image."""
    del step
    ds = data.make_dataset(source, meta["lengths"], eval_idx if len(eval_idx) else train_idx,
                           collate, seed=None, num_epochs=None, **common)
    out = {}
    for suffix, shift in (("", 0), ("_swapped", 1)):
      rows = []
      for i in range(min(config.eval_batches, len(ds))):
        batch = dict(ds[i], pixels=np.roll(ds[i]["pixels"], shift, axis=0))
        rows.append(jax.device_get(eval_fn(state["params"], loop.device_batch(mesh, batch))))
      n = sum(float(r["tokens"]) for r in rows)
      out.update({f"eval/{k}{suffix}": sum(float(r[k]) * float(r["tokens"]) for r in rows)
                  / max(n, 1) for k in ("loss", "token_acc")})
    return out

  step, last, last_eval = start, {}, {}
  if not export_only:
    state, step, last, last_eval = loop.fit(
        config, workdir, state=state, step_fn=step_fn, step_args=(), mesh=mesh,
        train_iter=train_iter, mngr=mngr, sched=sched, total=total, start=start,
        evaluate=evaluate)
  mngr.close()
  out = {"step": step, "metrics": last, "eval": last_eval, "target": None, "heldout": None}
  if step == total or export_only:
    params = loop.to_host(state["params"])
    if jax.process_index() == 0:
      out["target"] = export(config, workdir, target, params, tokenizer)
      out["heldout"] = heldout(config, workdir, out["target"])
      logging.info("exported step %d to %s; held-out: %s", step, out["target"], out["heldout"])
  return out


_CONFIG = config_flags.DEFINE_config_file("config", None, "Target training config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "init/, checkpoints/, metrics.jsonl, target/.")
_EXPORT_ONLY = flags.DEFINE_bool("export_only", False,
                                 "Export the newest checkpoint and run the held-out check.")


def main(argv):
  del argv
  cli.setup()
  out = train(_CONFIG.value, _WORKDIR.value, _EXPORT_ONLY.value)
  logging.info("finished at step %d; target: %s", out["step"], out["target"])


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  cli.run(main)
