"""`python -m infer.bench pieces`: what one speculative round costs, piece by piece.

    python -m infer.bench pieces [--batch 1] [--iters 20] [--repeats 5] [--folder DIR] [--json out.json]

On the vanilla benchmark's model (batch 1 by default), times with jitted loops (N iterations per
call, so dispatch does not count) and reports each piece in ms and as a multiple of one vanilla
decode step:
  target t=T    target forward of T new tokens over the KV cache + lm_head + argmax
                (T=1 is a vanilla step; T=5 verifies chain4, T=16/30 the dynamic trees)
  lm_head t=T   the lm_head matmul alone (part of the line above)
  draft t=T     one EAGLE draft step: fc and one layer on T tokens, then lm_head, log-softmax and
                top-k for the last (t=1: a tree level of a chain; t=5: the commit after chain4)
  compact       moving 5 accepted KV slots into place, all layers
A round of chain4 costs about: target t=5 + 4 x draft t=1 + draft t=5 (commit) + compact.
proj/scenes/size_target.py times the same pieces (target_piece, draft_piece, loop_times).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp

import vispec_jax as vj
from infer import bench_common as common
from vispec_jax import draft, sharding, testing
from vispec_jax.engine import speculative
from vispec_jax.models import decoder

SIZES = (1, 5, 16, 30)
TOP_K = 8  # a draft step's top-k


def target_piece(params, cfg, b: int, t: int, start: int, slots: int, dtype=jnp.float32):
  """fn(i, cache) -> (cache, scalar): the target's forward of t new tokens per row over a KV
  cache of `slots` (written at start + i, so attention covers that many) + lm_head + argmax."""
  def fn(i, c):
    x = decoder.embed_tokens(params, jnp.full((b, t), 5, jnp.int32) + i, dtype)
    pos = jnp.broadcast_to(start + i + jnp.arange(t)[None], (3, b, t))
    h, c = decoder.forward(params, cfg, x, pos, jnp.ones((b, t, slots), bool), c,
                           write_index=jnp.full((b,), start, jnp.int32) + i)
    return c, jnp.argmax(decoder.logits(params, h), -1).sum()
  return fn


def draft_piece(dparams, dcfg, head, b: int, t: int, start: int, slots: int, last_only: bool,
                dtype=jnp.float32):
  """fn(i, draft cache) -> (cache, scalar): one draft step, fc and the layer on t tokens per row,
  then lm_head, log-softmax and top-k on the last token (`last_only`: a commit) or on all t (a
  tree level)."""
  def fn(i, c):
    x = draft.fuse(dparams, decoder.embed_tokens(head, jnp.full((b, t), 5, jnp.int32) + i, dtype),
                   jnp.full((b, t, dcfg.hidden_size), i, dtype))
    h, c = draft.layer_forward(dparams, dcfg, x, jnp.broadcast_to(start + i, (b, t)),
                               jnp.ones((b, t, slots), bool), c, start + i)
    return c, jax.lax.top_k(draft.log_probs(head, h[:, -1:] if last_only else h), TOP_K)[0].sum()
  return fn


def draft_cache(dcfg, b: int, slots: int, dtype=jnp.float32):
  sizes = {"batch": b, "length": slots, "kv_heads": dcfg.num_kv_heads, "head_dim": dcfg.head_dim}
  shape = tuple(sizes[a] for a in sharding.CACHE_AXES)  # the library's KV cache layout
  return (jnp.zeros(shape, dtype),) * 2


def loop_times(pieces: dict, iters: int, rounds: int) -> dict[str, list[float]]:
  """{name: seconds per iteration of every timed call} for pieces {name: (fn(i, carry) ->
  (carry, scalar), carry)}: each run `iters` times inside one jitted loop over its carry
  (donated), compiled and run once more untimed, then `rounds` rounds calling each in turn."""
  def looped(fn):
    def loop(carry):
      def body(i, state):
        c, s = fn(i, state[0])
        return c, state[1] + s.astype(jnp.float32)
      return jax.lax.fori_loop(0, iters, body, (carry, jnp.float32(0)))
    return jax.jit(loop, donate_argnums=0)

  carries = {name: jax.tree.map(jnp.copy, carry) for name, (_, carry) in pieces.items()}

  def call(name, f):
    def run():
      carries[name], total = f(carries[name])
      return jax.block_until_ready(total)
    return run

  fns = {name: call(name, looped(fn)) for name, (fn, _) in pieces.items()}
  runs = common.alternate(fns, rounds, warmup=1)
  return {name: [s / iters for s in r.seconds] for name, r in runs.items()}


def run_pieces(args) -> list[dict]:
  target = vj.load_target(common.write_bench_checkpoint(args.folder))
  cfg, tparams, b = target.config.text, target.params["text"], args.batch
  batch = vj.prepare(target, [common.BENCH_PROMPT] * b,
                     images=[[testing.scene_image(224, 224, seed=i)] for i in range(b)])
  p = batch.input_ids.shape[1]  # the prompt's slots (what the cache holds does not change a timing)
  slots = p + 128 + 64
  cache = decoder.init_cache(cfg, b, slots)
  dcfg = draft.DraftConfig.for_target(cfg)
  dparams = draft.init_params(dcfg, jax.random.PRNGKey(7))
  head = draft.head_params(tparams)

  def lm_head(t):
    return lambda i, c: (c, jnp.argmax(decoder.logits(
        tparams, jnp.full((b, t, cfg.hidden_size), i, jnp.float32)), -1).sum())

  def compact(i, c):
    c = speculative.compact_cache(c, jnp.full((b,), p, jnp.int32) + i,
                                  jnp.tile(jnp.arange(5)[None], (b, 1)))
    return c, c[0][0][0, 0, 0, 0]

  pieces = {f"target t={t}": (target_piece(tparams, cfg, b, t, p, slots), cache)
            for t in SIZES}
  pieces.update({f"lm_head t={t}": (lm_head(t), jnp.zeros(())) for t in SIZES})
  pieces.update({f"draft t={t}": (draft_piece(dparams, dcfg, head, b, t, p, slots, True),
                                  draft_cache(dcfg, b, slots))
                 for t in SIZES[:2]})
  pieces["compact"] = (compact, cache)
  times = loop_times(pieces, args.iters, args.repeats)
  rows = [{"piece": name, "ms": 1e3 * min(s)} for name, s in times.items()]  # the fastest
  step = rows[0]["ms"]
  print(f"pieces: batch {b}, vocab {cfg.vocab_size}, cache {slots} slots, "
        f"{jax.default_backend()} ({len(jax.devices())} devices), load average "
        f"{os.getloadavg()[0]:.1f}")
  print(f"{'piece':<14}{'ms':>9}{'x step':>8}")
  for r in rows:
    r["x_step"] = r["ms"] / step
    print(f"{r['piece']:<14}{r['ms']:9.2f}{r['x_step']:8.2f}")
  return rows


def add_parser(sub):
  p = sub.add_parser("pieces", help="time the pieces of a speculative round (why a speedup is "
                                    "what it is)")
  p.add_argument("--batch", type=int, default=1)
  p.add_argument("--iters", type=int, default=20, help="iterations per timed call")
  p.add_argument("--repeats", type=int, default=5, help="timed calls; the fastest is reported")
  p.add_argument("--folder", default="/tmp/vispec-bench-model")
  p.add_argument("--json", default=None, help="also write the rows to this JSON file")
  p.set_defaults(main=main)


def main(args) -> int:
  common.check_args(args)
  return common.finish(args, run_pieces(args), True)
