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
  train_step           train/lm.py:answer_loss -> grads -> clip -> AdamW; config.scene_word_weight
                       weighs the tokens that are scene words (colours, shapes, cells, ...;
                       target_eval.scene_word_weights) in the objective, the logged loss stays
                       the plain mean
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
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags, logging
from ml_collections import config_flags

from configs import common
from train import cli, data, datagen, lm, loop, sharding, targets
from proj.scenes import target_eval, target_folder, vision_pretrain
import vispec_jax as vj
from vispec_jax import models


def init_folder(config, workdir: str, tokenizer) -> str:
  """workdir/init: config.json from `config.model`, the starting weights and the tokenizer and
  processor. Written once (atomically); a later run (resume) reads the same folder.

  The weights are random (`config.seed`), then, where `config.init` says so (issue 16's stages):
  `init.target` a trained target folder of the same dimensions (stage 2 starts from stage 1),
  `init.text` one whose language model only is taken (stage 3: the tower's merge differs),
  `init.vision` a stage-0 tower export (proj/scenes/vision_pretrain.py) for params["vision"]
  (with its merger unless `init.merger` is False: the fresh one stays),
  with `init.scale_tokens` scaling the merger's last layer so that its tokens enter the language
  model at the norm of the text embeddings (measured on 32 train scenes of the tower's style)."""
  folder = os.path.join(workdir, "init")
  raw = target_folder.hf_config(tokenizer, config.model)
  path = os.path.join(folder, "config.json")
  if os.path.isfile(path):
    with open(path) as f:
      if json.load(f) != json.loads(json.dumps(raw)):
        raise ValueError(f"{path} was written for other model dimensions or another tokenizer "
                         "than this config's; use another workdir")
    return folder
  fresh = vj.init_target(models.config_from_hf(raw), jax.random.PRNGKey(config.seed))
  params, info = jax.device_get(fresh.params), {}
  init = config.get("init") or {}
  if init.get("target"):
    start = vj.load_target(init["target"])
    if start.config != fresh.config:
      raise ValueError(f"init.target {init['target']} has other dimensions than config.model")
    params, info["target"] = jax.device_get(start.params), init["target"]
  if init.get("text"):
    start = vj.load_target(init["text"])
    if start.config.text != fresh.config.text:
      raise ValueError(f"init.text {init['text']} has another language model than config.model")
    params, info["text"] = dict(params, text=jax.device_get(start.params["text"])), init["text"]
  if init.get("vision"):
    merger = init.get("merger", True)
    tower = vision_pretrain.load_tower(init["vision"], fresh.config, merger)
    params = dict(params, vision=dict(params["vision"], **tower))
    info["vision"], info["merger"] = init["vision"], "stage 0" if merger else "fresh"
  if init.get("vision") and init.get("scale_tokens"):
    with tempfile.TemporaryDirectory() as tmp:  # the processor the target will use
      target_folder.write(tmp, raw, params, fresh.family.name_map(fresh.config), tokenizer)
      params["vision"], info["token_scale"] = scale_tokens(
          vj.load_target(tmp), params, init["vision"], tuple(config.datagen.image_size))
  target_folder.write(folder, raw, params, fresh.family.name_map(fresh.config), tokenizer,
                      extra={"init.json": info})
  logging.info("init folder %s: %s", folder, info or "random weights")
  return folder


def scale_tokens(target, params, stage0_folder: str, image_hw: tuple[int, int],
                 scenes: int = 32) -> tuple[dict, dict]:
  """params["vision"] with the merger's last layer (fc2) multiplied by the mean L2 norm of the
  text embedding rows over that of the tower's tokens on `scenes` train scenes (the style the
  tower was trained on), and the numbers."""
  with open(os.path.join(stage0_folder, "stage0.json")) as f:
    options = json.load(f).get("scene_options") or {}
  adapter = targets.VisionAdapter.for_target(target, image_hw)
  pixels = vision_pretrain.SceneBatches(adapter, scenes, 0, options).arrays(range(scenes))["pixels"]
  tokens = adapter.encode(params["vision"], pixels)
  token_norm = float(np.linalg.norm(np.asarray(tokens, np.float32), axis=-1).mean())
  text_norm = float(np.linalg.norm(np.asarray(params["text"]["embed"], np.float32), axis=-1).mean())
  s = text_norm / token_norm
  merger = dict(params["vision"]["merger"], fc2={k: v * s for k, v in
                                                 params["vision"]["merger"]["fc2"].items()})
  return (dict(params["vision"], merger=merger),
          {"scale": s, "token_norm": token_norm, "text_embed_norm": text_norm})


def train_step(text_cfg, vision, tx, token_weight, state, batch):
  """One optimizer step on the answer tokens' cross-entropy (weighted per predicted token by
  `token_weight`, float [vocab], or None)."""
  loss = functools.partial(lm.answer_loss, text_cfg, vision, token_weight=token_weight)
  return loop.grad_step(tx, loss, state, batch)


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
  mesh = loop.setup_mesh(config)
  rules = sharding.rules(config.sharding.rules)
  tokenizer = target_folder.load_tokenizer(config.tokenizer)
  target = vj.load_target(init_folder(config, workdir, tokenizer))
  config.target.folder = target.folder
  main = datagen.run(config) or datagen.dataset_dir(config)
  mix = datagen.mix_config(config)
  if mix is not None:
    datagen.run(mix)  # data.mix's records, unless already built
  records = data.Records(config, main)
  vision = targets.VisionAdapter.for_target(target, records.meta["image_hw"])
  text_cfg = target.config.text
  collate = data.Collator.for_target(config, target, vision)

  host_params = jax.device_get(target.params)
  run = loop.Run.create(
      config, workdir, mesh, host_params,
      sharding.param_shardings(host_params, mesh, sharding.head_dims(target.config), rules),
      records.train_iter(collate), records.total, records.warmup)
  logging.info("target: %.2fM params, %d records (%d held out), %d steps of %d",
               sum(x.size for x in jax.tree.leaves(host_params)) / 1e6, len(records.source),
               len(records.eval_idx), run.total, config.batch_size)
  weight = None
  if config.scene_word_weight != 1.0:
    weight = jnp.asarray(target_eval.scene_word_weights(tokenizer, config.scene_word_weight))
  step_fn = run.jit_step(functools.partial(train_step, text_cfg, vision, run.tx, weight))
  eval_fn = run.jit_eval(lambda p, b: lm.answer_loss(text_cfg, vision, p, b)[1])

  def evaluate(state, step):
    """Loss and token accuracy on held-out batches, with each row's own image and with the
    images rotated by one row (`_swapped`): the gap is what the model reads from the image."""
    del step
    ds = records.dataset(collate, train=False)
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

  state, step, last, last_eval = run.fit(step_fn, evaluate, skip=export_only)
  out = {"step": step, "metrics": last, "eval": last_eval, "target": None, "heldout": None}
  if step == run.total or export_only:
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
