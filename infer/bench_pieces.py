"""`python -m infer.bench pieces`: what one speculative round costs, piece by piece.

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
"""

from __future__ import annotations

import os
import time

SIZES = (1, 5, 16, 30)


def run_pieces(args) -> list[dict]:
  import jax
  import jax.numpy as jnp

  import vispec_jax as vj
  from vispec_jax import draft, sharding, testing
  from vispec_jax.engine import decoding, speculative
  from vispec_jax.models import decoder
  from infer.bench import BENCH_PROMPT, write_bench_checkpoint

  target = vj.load_target(write_bench_checkpoint(args.folder))
  cfg, tparams, b, n = target.config.text, target.params["text"], args.batch, args.iters
  batch = vj.prepare(target, [BENCH_PROMPT] * b,
                     images=[[testing.scene_image(224, 224, seed=i)] for i in range(b)])
  embeds = target.embed(target.params, batch)
  p = embeds.shape[1]
  slots = p + 128 + 64
  _, cache, _ = jax.jit(lambda e: decoding.prefill(
      tparams, cfg, e, jnp.asarray(batch.positions), jnp.asarray(batch.attention_mask), slots))(
          embeds)
  dcfg = draft.DraftConfig.for_target(cfg)
  dparams = draft.init_params(dcfg, jax.random.PRNGKey(7))
  head = draft.head_params(tparams)

  def timed(fn) -> float:
    """ms per iteration of `fn(i, cache) -> (cache, scalar)` run n times inside one jit."""
    def loop(cache):
      def body(i, carry):
        c, acc = carry
        c, s = fn(i, c)
        return c, acc + s.astype(jnp.float32)
      return jax.lax.fori_loop(0, n, body, (cache, jnp.float32(0)))
    f = jax.jit(loop)
    jax.block_until_ready(f(cache))
    best = min(_seconds(lambda: jax.block_until_ready(f(cache))) for _ in range(args.repeats))
    return 1e3 * best / n

  def target_tokens(t):
    def fn(i, c):
      x = decoder.embed_tokens(tparams, jnp.full((b, t), 5, jnp.int32) + i, embeds.dtype)
      pos = jnp.broadcast_to(p + i + jnp.arange(t)[None], (3, b, t))
      h, c = decoder.forward(tparams, cfg, x, pos, jnp.ones((b, t, slots), bool), c,
                             write_index=jnp.full((b,), p, jnp.int32) + i)
      return c, jnp.argmax(decoder.logits(tparams, h), -1).sum()
    return fn

  def lm_head(t):
    return lambda i, c: (c, jnp.argmax(decoder.logits(tparams, jnp.full((b, t, cfg.hidden_size),
                                                                       i, jnp.float32)), -1).sum())

  def draft_tokens(t):
    sizes = {"batch": b, "length": slots, "kv_heads": dcfg.num_kv_heads, "head_dim": dcfg.head_dim}
    shape = tuple(sizes[a] for a in sharding.CACHE_AXES)  # the library's KV cache layout
    dcache = (jnp.zeros(shape, embeds.dtype),) * 2
    def fn(i, c):
      x = draft.fuse(dparams, decoder.embed_tokens(head, jnp.full((b, t), 5, jnp.int32) + i,
                                                   embeds.dtype),
                     jnp.full((b, t, cfg.hidden_size), i, embeds.dtype))
      h, _ = draft.layer_forward(dparams, dcfg, x, jnp.broadcast_to(p + i, (b, t)),
                                 jnp.ones((b, t, slots), bool), dcache, p + i)
      return c, jax.lax.top_k(draft.log_probs(head, h[:, -1:]), 8)[0].sum()  # commit: last only
    return fn

  def compact(i, c):
    c = speculative.compact_cache(c, jnp.full((b,), p, jnp.int32) + i,
                                  jnp.tile(jnp.arange(5)[None], (b, 1)))
    return c, c[0][0][0, 0, 0, 0]

  rows = [{"piece": f"target t={t}", "ms": timed(target_tokens(t))} for t in SIZES]
  rows += [{"piece": f"lm_head t={t}", "ms": timed(lm_head(t))} for t in SIZES]
  rows += [{"piece": f"draft t={t}", "ms": timed(draft_tokens(t))} for t in SIZES[:2]]
  rows.append({"piece": "compact", "ms": timed(compact)})
  step = rows[0]["ms"]
  print(f"pieces: batch {b}, vocab {cfg.vocab_size}, cache {slots} slots, "
        f"{jax.default_backend()} ({len(jax.devices())} devices), load average "
        f"{os.getloadavg()[0]:.1f}")
  print(f"{'piece':<14}{'ms':>9}{'x step':>8}")
  for r in rows:
    r["x_step"] = r["ms"] / step
    print(f"{r['piece']:<14}{r['ms']:9.2f}{r['x_step']:8.2f}")
  return rows


def _seconds(fn) -> float:
  t0 = time.perf_counter()
  fn()
  return time.perf_counter() - t0


def add_parser(sub):
  p = sub.add_parser("pieces", help="time the pieces of a speculative round (why a speedup is "
                                    "what it is)")
  p.add_argument("--batch", type=int, default=1)
  p.add_argument("--iters", type=int, default=20, help="iterations per timed call")
  p.add_argument("--repeats", type=int, default=5, help="timed calls; the fastest is reported")
  p.add_argument("--folder", default="/tmp/vispec-bench-model")
  p.add_argument("--json", default=None, help="also write the rows to this JSON file")
  return p
