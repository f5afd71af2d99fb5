"""Stage 0 of issue 16: trains the scenes target's vision tower to see, before any language.

    python -m proj.scenes.vision_pretrain --config proj/scenes/configs/vision.py --workdir DIR [--config.key=value]
    python -m proj.scenes.vision_pretrain --config proj/scenes/configs/vision.py --workdir DIR --export_only

The tower is the target's own (Qwen2.5-VL: patch embed, window-attention blocks, 2x2 merger;
dimensions from `config.model`, the target's config), fed through the target's processor
(`train/targets.py:VisionAdapter`). The objective comes straight from the scene's ground truth
(`proj/scenes/generator.py` knows every object): for each cell of the 3x3 grid, whether it holds an
object and that object's colour, shape, size and texture. A small probe head (one learned query
per cell attending over the merged tokens, an MLP, one linear layer; dropped after this stage)
reads them out:

  scenes            drawn on the fly, `scenes.make_scene(seed, **config.scenes.options)` with
                    seeds of the train range only (batch i: first_seed + i * batch_size + ...)
  loss              cross-entropy of `occupied` over all 9 cells + of each attribute over the
                    occupied cells
  optimizer, checkpoints, logging, the loop     shared with the other trainers (train/loop.py)
  every eval_every  held-out accuracy on `eval_scenes` validation scenes (seeds never trained
                    on): `eval/acc/occupied` over all cells, `eval/acc/<attribute>` and
                    `eval/acc/object` (all four right) over occupied cells; `wall_s`: training
                    seconds so far, over every resumed run
  at the end, or with --export_only (newest checkpoint)
                    `export.dir` (default workdir/stage0): model.safetensors with the tower's
                    tensors under the target checkpoint's own `visual.*` names (fp32), the
                    vision config and the last held-out metrics (stage0.json)

Logged every step: `loss`, `loss/<head>`, `acc/<head>` (training batch), `grad_norm` and
`token_norm`, the mean L2 norm of the merged tokens the language model will read.

A restarted run resumes from the newest checkpoint (params, AdamW state, next batch).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import flags, logging
from ml_collections import config_flags
from PIL import Image, ImageDraw, ImageFont

from infer.bench_table import LINE_COLOURS
from train import cli, loop, sharding, targets
from proj.scenes import target_folder
from vispec_jax import checkpoints, layers
from proj.scenes import generator as scenes
from vispec_jax.configs import TargetConfig
from vispec_jax.models import qwen2_5_vl
from vispec_jax import models

GRID = 3  # scenes.py: a 3 x 3 grid of cells, one object at most per cell
ATTRIBUTES = {"colour": list(scenes.COLOURS), "shape": list(scenes.SHAPES),
              "size": list(scenes.SIZES), "texture": list(scenes.TEXTURES)}
# The head's outputs per cell, in this order: their logits are concatenated on the last axis.
CLASSES = {"occupied": 2, **{k: len(v) for k, v in ATTRIBUTES.items()}}


# ----------------------------------------------------------------------------- data


def cell_labels(scene: dict) -> np.ndarray:
  """int32[9, 5]: per cell (row-major) `occupied` (0 / 1), then the index of the object's
  colour, shape, size and texture in ATTRIBUTES (-1 for an empty cell)."""
  out = np.full((GRID * GRID, len(CLASSES)), -1, np.int32)
  out[:, 0] = 0
  for o in scene["objects"]:
    k = o["row"] * GRID + o["col"]
    out[k, 0] = 1
    for j, (key, values) in enumerate(ATTRIBUTES.items(), 1):
      out[k, j] = values.index(o[key])
  return out


class SceneBatches:
  """Batches of scenes drawn on the fly from consecutive seeds; resumable like a grain iterator
  (`get_state` / `set_state`: the next batch index). Batch i holds the seeds
  first_seed + i * batch_size + [0, batch_size); this process makes its share of the rows."""

  def __init__(self, adapter: targets.VisionAdapter, batch_size: int, first_seed: int,
               options: dict, end_seed: int = scenes.SPLIT_SEEDS["validation"]):
    if not scenes.SPLIT_SEEDS["train"] <= first_seed < end_seed:
      raise ValueError(f"scenes.first_seed {first_seed} is outside the train seed range "
                       f"[{scenes.SPLIT_SEEDS['train']}, {end_seed})")
    nproc = jax.process_count()
    if batch_size % nproc:
      raise ValueError(f"batch_size {batch_size} is not a multiple of {nproc} processes")
    self.adapter, self.batch_size, self.first, self.end = adapter, batch_size, first_seed, end_seed
    self.options = dict(options)
    self.local = batch_size // nproc
    self.index = 0

  def arrays(self, seeds) -> dict:
    """{"pixels": float32[n, patches, patch_dim], "labels": int32[n, 9, 5]} for these seeds."""
    pixels, labels = [], []
    for seed in seeds:
      image, scene = scenes.make_scene(int(seed), self.adapter.image_hw[0], **self.options)
      pixels.append(self.adapter.pixels(np.asarray(image)))
      labels.append(cell_labels(scene))
    return {"pixels": np.stack(pixels), "labels": np.stack(labels)}

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    base = self.first + self.index * self.batch_size
    if base + self.batch_size > self.end:
      raise ValueError(f"batch {self.index} would use seeds from {self.end} on (held out)")
    seeds = base + np.arange(self.batch_size)
    mine = seeds[jax.process_index() * self.local:][:self.local]
    self.index += 1
    return dict(self.arrays(mine), global_index=seeds, global_tokens=np.asarray(self.batch_size))

  def get_state(self) -> dict:
    return {"next_batch": self.index}

  def set_state(self, state: dict) -> None:
    self.index = int(state["next_batch"])


# ---------------------------------------------------------------------------- model


def target_config(config) -> TargetConfig:
  """The target's TargetConfig for `config.model` (the same config.json proj.scenes.train_target writes)."""
  tokenizer = target_folder.load_tokenizer(config.folder)
  return models.config_from_hf(target_folder.hf_config(tokenizer, config.model))


def make_adapter(config, cfg: TargetConfig) -> targets.VisionAdapter:
  """The target's tower for square images of `scenes.image_size`, with its processor."""
  size = int(config.scenes.image_size)
  return targets.VisionAdapter(cfg, qwen2_5_vl.make_image_processor(config.folder, cfg),
                               (size, size))


def head_shapes(h, token_dim: int, n_tokens: int) -> dict:
  f32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
  lin = lambda i, o: {"kernel": f32(i, o), "bias": f32(o)}
  d = h.dim
  shapes = {"query": f32(GRID * GRID, d), "pos": f32(n_tokens, d),
            "k": lin(token_dim, d), "v": lin(token_dim, d),
            "norm1": {"scale": f32(d)}, "mlp": {"fc1": lin(d, h.mlp), "fc2": lin(h.mlp, d)},
            "norm2": {"scale": f32(d)}, "out": lin(d, sum(CLASSES.values()))}
  if h.get("position_weight"):
    shapes["where_norm"] = {"scale": f32(token_dim)}
    shapes["where"] = lin(token_dim, 2 * grid_side(n_tokens))
  return shapes


def init_params(config, cfg: TargetConfig, n_tokens: int) -> dict:
  """{"vision": the target's tower, initialised as vj.init_target does or loaded from the
  exported tower `config.init`, "head": the probe}."""
  kv, kh = jax.random.split(jax.random.PRNGKey(config.seed))
  if config.get("init"):
    vision = load_tower(config.init, cfg)
  else:
    vision = layers.init_params(qwen2_5_vl.param_shapes(cfg)["vision"], kv)
  head = layers.init_params(head_shapes(config.head, cfg.vision.out_hidden_size, n_tokens), kh)
  # Unit-scale cell queries and token positions: attention logits of order 1 from the start
  # (at 0.02 both would start at a saddle, with near-zero gradients for either).
  head["query"], head["pos"] = head["query"] * 50.0, head["pos"] * 50.0
  return {"vision": vision, "head": head}


def grid_side(n_tokens: int) -> int:
  """The side of the square grid of merged tokens."""
  side = int(round(np.sqrt(n_tokens)))
  if side * side != n_tokens:
    raise ValueError(f"{n_tokens} merged tokens are not a square grid")
  return side


def cell_window(n_tokens: int) -> np.ndarray:
  """bool[9, n_tokens]: the merged tokens (a square grid, row-major) a cell's query may read:
  those whose square overlaps the cell grown by half a token on every side (objects are
  jittered inside their cell; a query that must first find its cell among all tokens learned
  nothing in 100 steps)."""
  side = grid_side(n_tokens)
  lo = (np.arange(side) - 0.5) / side   # token squares grown by half a token, in image units
  hi = (np.arange(side) + 1.5) / side
  cells = np.arange(GRID)
  near = (lo[None, :] < (cells[:, None] + 1) / GRID) & (hi[None, :] > cells[:, None] / GRID)
  return (near[:, None, :, None] & near[None, :, None, :]).reshape(GRID * GRID, n_tokens)


def head_apply(p: dict, h, tokens: jax.Array) -> jax.Array:
  """Merged tokens [B, T, E] (row-major over the token grid) -> logits [B, 9, sum(CLASSES)]."""
  b = tokens.shape[0]
  dh = h.dim // h.heads
  q = p["query"].reshape(GRID * GRID, h.heads, dh)
  k = (layers.linear(tokens, p["k"]) + p["pos"]).reshape(b, -1, h.heads, dh)
  v = layers.linear(tokens, p["v"]).reshape(b, -1, h.heads, dh)
  logits = jnp.einsum("cnd,btnd->bnct", q, k) * dh ** -0.5
  probs = jax.nn.softmax(jnp.where(cell_window(tokens.shape[1]), logits, -1e9), axis=-1)
  read = jnp.einsum("bnct,btnd->bcnd", probs, v).reshape(b, GRID * GRID, h.dim)
  # Normalised at once: what a cell reads is the whole signal (a residual on top of the
  # constant query would start 100x smaller than it, and learn nothing for 100s of steps).
  x = layers.rms_norm(read, p["norm1"], 1e-6)
  x = x + layers.linear(jax.nn.gelu(layers.linear(x, p["mlp"]["fc1"])), p["mlp"]["fc2"])
  return layers.linear(layers.rms_norm(x, p["norm2"], 1e-6), p["out"])


def losses(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, dict]:
  """(loss, metrics): cross-entropy of `occupied` over all cells plus that of every attribute
  over the occupied cells; `correct/*` and `count/*` (sums, for exact held-out aggregation)."""
  parts = jnp.split(logits, np.cumsum(list(CLASSES.values()))[:-1].tolist(), axis=-1)
  total, m = 0.0, {}
  right = []
  for j, (name, lg) in enumerate(zip(CLASSES, parts)):
    y = labels[..., j]
    valid = y >= 0
    ce = optax.softmax_cross_entropy_with_integer_labels(lg.astype(jnp.float32), jnp.maximum(y, 0))
    n = jnp.maximum(valid.sum(), 1)
    loss = jnp.where(valid, ce, 0.0).sum() / n
    correct = (jnp.argmax(lg, -1) == y) & valid
    total = total + loss
    m[f"loss/{name}"] = loss
    m[f"correct/{name}"], m[f"count/{name}"] = correct.sum(), valid.sum()
    if name != "occupied":
      right.append(correct)
  occupied = labels[..., 0] == 1
  m["correct/object"] = (functools.reduce(jnp.logical_and, right) & occupied).sum()
  m["count/object"] = occupied.sum()
  m["loss"] = total
  return total, m


def position_loss(p: dict, tokens: jax.Array) -> tuple[jax.Array, dict]:
  """Each merged token's own row and column in the token grid, read by one linear layer
  (`where`) from the RMS-normalised token: cross-entropy of both, and `correct/position` (both right) over every token. The
  tower's tokens carry only relative positions (2-D RoPE), so without this objective a token
  does not say where in the image it is (a linear probe on the frozen stage-0 tower: row 0.25,
  column 0.24, chance 0.125), and the language model must find a cell through M-RoPE alone.
  Normalised first: read from the raw token, the objective was met by inflating the tokens
  (mean L2 norm 4 -> 32 in 2,000 steps), so the position drowned every attribute once the
  tokens were scaled to the text embeddings' norm (docs/embedded-model.md)."""
  b, n, _ = tokens.shape
  side = grid_side(n)
  rows, cols = np.divmod(np.arange(n), side)
  normed = layers.rms_norm(tokens, p["where_norm"], 1e-6)
  row_lg, col_lg = jnp.split(layers.linear(normed, p["where"]).astype(jnp.float32), 2, axis=-1)
  ce = optax.softmax_cross_entropy_with_integer_labels
  loss = (ce(row_lg, jnp.broadcast_to(rows, (b, n))).mean()
          + ce(col_lg, jnp.broadcast_to(cols, (b, n))).mean())
  right = (row_lg.argmax(-1) == rows) & (col_lg.argmax(-1) == cols)
  return loss, {"loss/position": loss, "correct/position": right.sum(),
                "count/position": jnp.asarray(b * n)}


def forward(adapter, h, params, batch) -> tuple[jax.Array, dict]:
  tokens = adapter.encode(params["vision"], batch["pixels"])
  loss, m = losses(head_apply(params["head"], h, tokens), batch["labels"])
  if h.get("position_weight"):
    where, mw = position_loss(params["head"], tokens)
    loss = loss + h.position_weight * where
    m.update(mw, loss=loss)
  m["token_norm"] = jnp.linalg.norm(tokens.astype(jnp.float32), axis=-1).mean()
  return loss, m


def accuracies(m: dict) -> dict:
  """correct/* and count/* sums -> acc/* shares (the other metrics pass through)."""
  out = {k: v for k, v in m.items() if not k.startswith(("correct/", "count/"))}
  for key in m:
    if key.startswith("correct/"):
      name = key.split("/", 1)[1]
      out[f"acc/{name}"] = m[key] / jnp.maximum(m[f"count/{name}"], 1)
  return out


def train_step(adapter, h, tx, state, batch):
  def loss(params, batch):
    loss, m = forward(adapter, h, params, batch)
    return loss, accuracies(m)
  return loop.grad_step(tx, loss, state, batch)


# --------------------------------------------------------------------------- export


MERGER = "visual.merger."


def vision_name_map(cfg: TargetConfig, merger: bool = True) -> checkpoints.NameMap:
  """The target checkpoint's names of the tower's tensors (`visual.*`) only; without the
  merger's, which are then ignored if present."""
  full = qwen2_5_vl.name_map(cfg)
  nm = checkpoints.NameMap(full.rules)
  nm.entries = {k: v for k, v in full.entries.items()
                if k.startswith("visual.") and (merger or not k.startswith(MERGER))}
  nm.optional = {k for k in full.entries if k.startswith(MERGER) and not merger}
  return nm


def export(folder: str, cfg: TargetConfig, vision_params, info: dict) -> str:
  """folder/model.safetensors (fp32, `visual.*` names), folder/stage0.json (vision config and
  `info`), written atomically."""
  def fill(tmp):
    checkpoints.save_hf({"vision": vision_params}, vision_name_map(cfg),
                        os.path.join(tmp, "model.safetensors"))
    with open(os.path.join(tmp, "stage0.json"), "w") as f:
      json.dump(dict(info), f, indent=1, default=float)
  return checkpoints.write_folder(folder, fill)


def load_tower(folder: str, cfg: TargetConfig, merger: bool = True) -> dict:
  """The tower's params (the target's `params["vision"]` layout) from an exported folder;
  without its merger (merger=False: e.g. another merge size) the tree has no "merger"."""
  shapes = dict(qwen2_5_vl.param_shapes(cfg)["vision"])
  if not merger:
    del shapes["merger"]
  files = checkpoints.weight_files(folder)
  return checkpoints.load_params(files, vision_name_map(cfg, merger), {"vision": shapes},
                                 jnp.float32)["vision"]


# ----------------------------------------------------------------------------- curve


def curve(workdir: str) -> list[dict]:
  """The held-out rows of workdir/metrics.jsonl ({"step", "wall_s", "eval/acc/*"}), one per step
  (the newest row of a step evaluated twice, e.g. after a resume)."""
  rows = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      row = json.loads(line)
      if "wall_s" in row:
        rows[row["step"]] = row
  return [rows[s] for s in sorted(rows)]


def curve_heads(rows: list[dict]) -> list[str]:
  """The heads the curve shows: every attribute, `object`, and `position` if it was trained."""
  extra = ["position"] if rows and "eval/acc/position" in rows[-1] else []
  return list(CLASSES) + ["object"] + extra


def curve_table(rows: list[dict]) -> str:
  """Markdown: training minutes, step, held-out accuracy of each head."""
  names = curve_heads(rows)
  out = ["| minutes | step | " + " | ".join(names) + " |",
         "|---:|---:|" + "---:|" * len(names)]
  for r in rows:
    out.append(f"| {r['wall_s'] / 60:.1f} | {r['step']} | "
               + " | ".join(f"{r[f'eval/acc/{n}']:.3f}" for n in names) + " |")
  return "\n".join(out)


def plot_curve(rows: list[dict], path: str, title: str, target: float = 0.95) -> None:
  """Held-out accuracy per head vs training minutes, one line per head, drawn with PIL."""
  font, small = ImageFont.load_default(size=13), ImageFont.load_default(size=11)
  width, height, left, right, top, bottom = 720, 420, 56, 130, 40, 46
  img = Image.new("RGB", (width, height), "white")
  draw = ImageDraw.Draw(img)
  draw.text((width // 2, 10), title, fill="black", font=font, anchor="mt")
  x0, y0, x1, y1 = left, top, width - right, height - bottom
  end = max(r["wall_s"] for r in rows) / 60 if rows else 1.0
  xy = lambda m, a: (x0 + m / max(end, 1e-9) * (x1 - x0), y1 - a * (y1 - y0))
  for t in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0):
    draw.line([(x0, xy(0, t)[1]), (x1, xy(0, t)[1])], fill=(230, 230, 230))
    draw.text((x0 - 6, xy(0, t)[1]), f"{t:.1f}", fill="black", font=small, anchor="rm")
  step = max(1, int(round(end / 6 / 5)) * 5) if end > 10 else max(1, int(end // 6) or 1)
  for m in range(0, int(end) + 1, step):
    draw.line([(xy(m, 0)[0], y1), (xy(m, 0)[0], y1 + 4)], fill="black")
    draw.text((xy(m, 0)[0], y1 + 7), str(m), fill="black", font=small, anchor="mt")
  for xs in range(x0, x1, 8):  # the exit criterion
    draw.line([(xs, xy(0, target)[1]), (min(xs + 4, x1), xy(0, target)[1])], fill=(120, 120, 120))
  draw.rectangle([x0, y0, x1, y1], outline="black")
  draw.text(((x0 + x1) / 2, y1 + 24), "training minutes", fill="black", font=small, anchor="mt")
  for i, name in enumerate(curve_heads(rows)):
    colour = LINE_COLOURS[i % len(LINE_COLOURS)]
    pts = [xy(r["wall_s"] / 60, r[f"eval/acc/{name}"]) for r in rows if f"eval/acc/{name}" in r]
    if len(pts) > 1:
      draw.line(pts, fill=colour, width=2)
    for x, y in pts:
      draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
    draw.line([(x1 + 12, y0 + 10 + 22 * i), (x1 + 36, y0 + 10 + 22 * i)], fill=colour, width=3)
    draw.text((x1 + 42, y0 + 10 + 22 * i), name, fill="black", font=font, anchor="lm")
  img.save(path)


# ---------------------------------------------------------------------------- train


def _wall_offset(workdir: str, start: int) -> float:
  """Training seconds of earlier runs: `wall_s` of the last held-out row at or before `start`."""
  if not start or not os.path.isfile(os.path.join(workdir, "metrics.jsonl")):
    return 0.0
  return ([float(r["wall_s"]) for r in curve(workdir) if r["step"] <= start] or [0.0])[-1]


def train(config, workdir: str, export_only: bool = False) -> dict:
  """Trains (or, with `export_only`, restores the newest checkpoint); exports the tower when the
  run is complete or `export_only`. Returns {"step", "metrics", "eval", "export"}."""
  os.makedirs(workdir, exist_ok=True)
  mesh = loop.setup_mesh(config)
  if config.eval_scenes % config.batch_size:
    raise ValueError(f"eval_scenes {config.eval_scenes} is not a multiple of batch_size "
                     f"{config.batch_size}")
  cfg = target_config(config)
  adapter = make_adapter(config, cfg)
  h = config.head
  train_iter = SceneBatches(adapter, config.batch_size, config.scenes.first_seed,
                            config.scenes.options)
  host_params = init_params(config, cfg, adapter.num_tokens)
  repl = sharding.replicated(mesh)  # about 1.5M parameters: replicated, the batch is split
  run = loop.Run.create(config, workdir, mesh, host_params,
                        jax.tree.map(lambda _: repl, host_params), train_iter,
                        int(config.total_steps), int(config.warmup_steps))
  logging.info("stage 0: tower %.2fM + head %.2fM params, %d steps of %d scenes (options %s)",
               sum(x.size for x in jax.tree.leaves(host_params["vision"])) / 1e6,
               sum(x.size for x in jax.tree.leaves(host_params["head"])) / 1e6, run.total,
               config.batch_size, dict(config.scenes.options))

  step_fn = run.jit_step(functools.partial(train_step, adapter, h, run.tx))
  eval_fn = run.jit_eval(lambda p, b: forward(adapter, h, p, b)[1])
  held_out = SceneBatches(adapter, config.batch_size, 0, config.scenes.options)
  eval_seeds = scenes.SPLIT_SEEDS["validation"] + np.arange(config.eval_scenes)
  t0, offset = time.time(), _wall_offset(workdir, run.start)

  def evaluate(state, step):
    """Accuracies on the held-out scenes (sums over batches, then shares)."""
    del step
    sums = {}
    for i in range(0, len(eval_seeds), config.batch_size):
      seeds = eval_seeds[i:i + config.batch_size]
      mine = seeds[jax.process_index() * held_out.local:][:held_out.local]
      m = jax.device_get(eval_fn(state["params"], loop.device_batch(mesh, held_out.arrays(mine))))
      for k, v in m.items():
        if k.startswith(("correct/", "count/")):
          sums[k] = sums.get(k, 0) + int(v)
    out = {f"eval/{k}": float(v) for k, v in accuracies(sums).items()}
    out["wall_s"] = offset + time.time() - t0
    return out

  state, step, last, last_eval = run.fit(step_fn, evaluate, skip=export_only)
  out = {"step": step, "metrics": last, "eval": last_eval, "export": None}
  if step == run.total or export_only:
    if not last_eval:
      last_eval = evaluate(state, step)
    vision = loop.to_host(state["params"])["vision"]
    if jax.process_index() == 0:
      info = {"step": step, "init": config.get("init"),
              "position_weight": float(h.get("position_weight") or 0.0),
              "vision_config": dataclasses.asdict(cfg.vision),
              "scene_options": dict(config.scenes.options),
              "eval_scenes": int(config.eval_scenes), **last_eval}
      out["export"] = export(config.export.dir or os.path.join(workdir, "stage0"), cfg, vision,
                             info)
      out["eval"] = last_eval
      logging.info("exported step %d to %s; held-out: %s", step, out["export"], last_eval)
  return out


def _define_flags() -> None:
  """Flags exist only when this module is the program: proj.scenes.train_target defines the same names,
  and both modules are imported by one test process."""
  config_flags.DEFINE_config_file("config", None, "Stage-0 config file.", lock_config=True)
  flags.DEFINE_string("workdir", None, "checkpoints/, metrics.jsonl, stage0/.")
  flags.DEFINE_bool("export_only", False,
                    "Export the newest checkpoint's tower (after a held-out eval).")
  flags.DEFINE_string("plot", None, "Only draw workdir's held-out curve to this PNG and "
                      "print it as a table (no training).")


def main(argv):
  del argv
  f = flags.FLAGS
  if f.plot:
    rows = curve(f.workdir)
    plot_curve(rows, f.plot, "Stage 0: held-out accuracy (occupied: all cells; the "
               "attributes: occupied cells)")
    print(curve_table(rows))
    return
  cli.setup()
  out = train(f.config, f.workdir, f.export_only)
  logging.info("finished at step %d; export: %s", out["step"], out["export"])


if __name__ == "__main__":
  _define_flags()
  flags.mark_flags_as_required(["config", "workdir"])
  cli.run(main)
