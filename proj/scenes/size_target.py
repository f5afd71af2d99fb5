"""Sizing the scenes target from measurements on this machine: for candidate model dimensions,
the time of one decode step (1 token, KV cache), of verifying a tree of 5 (a chain of 4), 16 or
30 tokens (through the decoder with a cache), of one draft step (fc + one decoder layer + the
shared lm_head, for 1 token and for a tree level of 8), and training throughput. The decode
pieces are infer/bench_pieces.py's.

    python -m proj.scenes.size_target --tokenizer data/scenes-tokenizer \
        --candidates 256x8x4x2x768 384x12x6x2x1024 [--cache 768] [--rounds 40] [--train-batch 8]

A candidate is HIDDEN x LAYERS x HEADS x KV_HEADS x MLP; the vision tower is configs/
scenes_target.py's "base" one. Each column is "ms ratio-to-step". Decode times are medians over
`rounds` rounds that call every piece once in turn (jitted, cache donated, block_until_ready,
batch 1), so the ratios compare like with like on a shared machine. Training: tokens/s of the
real train step (proj/scenes/train_target.py:train_step) on random batches of `--train-batch`
rows of `--train-len` tokens with one 224 x 224 image each.
"""

from __future__ import annotations

import functools
import re
import time

import jax
import jax.numpy as jnp
import numpy as np

import vispec_jax as vj
from infer import bench_pieces, cli as checks
from proj.scenes import target_folder, train_target as target
from proj.scenes.configs import target as scenes_target
from train import loop, targets
from vispec_jax import draft as draft_lib, models
from vispec_jax.models import decoder

TREES = (5, 16, 30)  # tree tokens verified per round
LEVEL = 8            # tree nodes a draft step expands (top_k)


def model_dims(candidate: str) -> dict:
  hidden, layers, heads, kv, mlp = (int(x) for x in candidate.split("x"))
  return dict(scenes_target.SIZES["base"], **scenes_target.COMMON_DIMS, hidden=hidden,
              layers=layers, heads=heads, kv_heads=kv, intermediate=mlp)


def count(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def decode_times(tgt, cache_len: int, rounds: int) -> dict:
  """Median ms of the target's and a draft's pieces (infer/bench_pieces.py, batch 1, the cache
  full up to its last `cache_len` slot), all called in turn every round."""
  cfg, params = tgt.config.text, tgt.params["text"]
  dcfg = draft_lib.DraftConfig.for_target(cfg)
  dparams = draft_lib.init_params(dcfg, jax.random.PRNGKey(1))
  head = draft_lib.head_params(params)

  def target_piece(n):
    return (bench_pieces.target_piece(params, cfg, 1, n, cache_len - n, cache_len),
            decoder.init_cache(cfg, 1, cache_len))

  def draft_piece(n):  # a tree level: lm_head and top-k on all n tokens
    return (bench_pieces.draft_piece(dparams, dcfg, head, 1, n, cache_len - n, cache_len, False),
            bench_pieces.draft_cache(dcfg, 1, cache_len))

  pieces = {"step": target_piece(1), **{f"verify{n}": target_piece(n) for n in TREES},
            "draft1": draft_piece(1), f"draft{LEVEL}": draft_piece(LEVEL)}
  times = bench_pieces.loop_times(pieces, 1, rounds)
  return {k: 1e3 * float(np.median(v)) for k, v in times.items()}


def train_rate(tgt, batch: int, length: int, steps: int) -> float:
  """Tokens/s of the target train step on random batches (one image per row)."""
  config = scenes_target.get_config()
  vision = targets.VisionAdapter.for_target(tgt, (224, 224))
  nv = vision.num_tokens
  rng = np.random.default_rng(0)
  ids = rng.integers(0, tgt.config.text.vocab_size, (batch, length)).astype(np.int32)
  vindex = np.full((batch, length), -1, np.int32)
  vindex[:, 4:4 + nv] = np.arange(nv)
  b = {"ids": ids, "attention_mask": np.ones((batch, length), bool),
       "answer": np.arange(length)[None].repeat(batch, 0) > 100,
       "positions": np.broadcast_to(np.arange(length, dtype=np.int32), (batch, 3, length)).copy(),
       "vision_index": vindex,
       "pixels": rng.standard_normal((batch,) + vision.item.layout.rot_pos.shape[:1]
                                     + (tgt.config.vision.patch_dim,)).astype(np.float32)}
  tx = loop.make_optimizer(config, loop.schedule(config, 100, 10))
  state = {"params": tgt.params, "opt_state": tx.init(tgt.params), "step": jnp.zeros((), jnp.int32)}
  fn = jax.jit(functools.partial(target.train_step, tgt.config.text, vision, tx), donate_argnums=(0,))
  state, m = fn(state, b)
  jax.block_until_ready(m)
  t0 = time.perf_counter()
  for _ in range(steps):
    state, m = fn(state, b)
  jax.block_until_ready(m)
  return batch * length * steps / (time.perf_counter() - t0)


def main(argv=None) -> int:
  """Bad options: one `error:` line, exit 2 (infer/cli.py)."""
  return checks.run(lambda: _main(argv))


def _main(argv) -> int:
  ap = checks.ArgumentParser(prog="python -m proj.scenes.size_target",
                             description=__doc__.split("\n")[0])
  ap.add_argument("--tokenizer", required=True)
  ap.add_argument("--candidates", nargs="+", default=["256x8x4x2x768"])
  ap.add_argument("--cache", type=int, default=768, help="KV cache slots (prompt + answer)")
  ap.add_argument("--rounds", type=int, default=40)
  ap.add_argument("--train-batch", type=int, default=8)
  ap.add_argument("--train-len", type=int, default=640)
  ap.add_argument("--train-steps", type=int, default=3, help="0: skip the training measurement")
  args = ap.parse_args(argv)
  for flag in ("--cache", "--rounds", "--train-batch", "--train-len"):
    checks.check_int(flag, getattr(args, flag[2:].replace("-", "_")), 1)
  checks.check_int("--train-steps", args.train_steps, 0)
  for cand in args.candidates:
    if not re.fullmatch(r"[1-9]\d*(x[1-9]\d*){4}", cand):
      raise checks.UsageError(f"--candidates {cand!r}: expected HIDDEN x LAYERS x HEADS x "
                              "KV_HEADS x MLP, e.g. 256x8x4x2x768")
  checks.check_folder("--tokenizer", args.tokenizer)
  tok = target_folder.load_tokenizer(args.tokenizer)
  print(f"vocab {len(tok)}, cache {args.cache}, {jax.devices()[0].device_kind}")
  names = ["step"] + [f"verify{n}" for n in TREES] + ["draft1", f"draft{LEVEL}"]
  print(f"{'candidate':>16s} {'params':>7s} {'text':>6s} {'vision':>6s} "
        + " ".join(f"{n:>12s}" for n in names) + f" {'train tok/s':>11s}")
  for cand in args.candidates:
    raw = target_folder.hf_config(tok, model_dims(cand))
    tgt = vj.init_target(models.config_from_hf(raw), jax.random.PRNGKey(0))
    t = decode_times(tgt, args.cache, args.rounds)
    rate = train_rate(tgt, args.train_batch, args.train_len, args.train_steps) if args.train_steps else 0
    cells = " ".join(f"{t[n]:6.2f} {t[n] / t['step']:5.2f}" for n in names)
    print(f"{cand:>16s} {count(tgt.params) / 1e6:6.2f}M {count(tgt.params['text']) / 1e6:5.2f}M "
          f"{count(tgt.params['vision']) / 1e6:5.2f}M {cells} {rate:11.0f}", flush=True)
  return 0


if __name__ == "__main__":
  from train import cli
  cli.setup()
  raise SystemExit(main())
