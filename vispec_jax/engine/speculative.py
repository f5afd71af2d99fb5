"""Speculative decoding: draft a token tree, verify it in one target forward, keep the longest
accepted path. The whole generation is ONE compiled `lax.while_loop`.

Per round (`speculative_loop`'s body), for every row of the batch:
  draft_tree = tree.build(drafter)              T nodes, node 0 = root (the pending token)
  verify     = target forward over the T nodes  writes their KV at [len, len + T), tree mask
  accept     = greedy argmax path, or lossless recursive rejection sampling
  commit     = emit the accepted draft tokens + the bonus token (cut at EOS and max_new_tokens),
               move the accepted path's KV to [len, len + a + 1) (target), commit it to the draft
Rows accept different lengths and finish at different times; finished rows keep their shapes
but stop advancing.

Target cache (a `KVCache`): P prompt slots (left-padded), then committed tokens up to
`length[b]`, then scratch for the tree. Positions: node at depth d gets position
next_position[b] + d (all mRoPE rows).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from vispec_jax import draft as draft_lib, layers
from vispec_jax.engine import decoding, sampling, tree as tree_lib
from vispec_jax.engine.kv_cache import KVCache
from vispec_jax.configs import GenerationConfig, TargetConfig
from vispec_jax.models import decoder
from vispec_jax.processing import Batch


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class SpecStats:
  """Per-row counters (arrays, no host sync). tau = accepted / target_forwards (ViSpec
  convention, bonus excluded); tokens per forward = tau + 1."""
  target_forwards: jax.Array   # int32[B]: verification forwards while the row was running
  accepted: jax.Array          # int32[B]: accepted draft tokens over those rounds
  histogram: jax.Array         # int32[B, max_depth + 1]: rounds by accepted length
  draft_steps: jax.Array       # int32[B]: drafter forward calls (tree levels + commits)

  @property
  def tau(self) -> jax.Array:
    return self.accepted / jnp.maximum(self.target_forwards, 1)

  @property
  def tokens_per_forward(self) -> jax.Array:
    return self.tau + 1.0


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class SpecOutput:
  tokens: jax.Array   # int32[B, max_new_tokens], pad after each row's end
  lengths: jax.Array  # int32[B]
  stats: SpecStats
  drafted: jax.Array  # bool[B, max_new_tokens]: an accepted draft token (False: the target's own)


# ------------------------------------------------------------------------- acceptance


def accept_greedy(tree: tree_lib.Tree, anc: jax.Array, logits: jax.Array):
  """Longest path whose every token is the target's argmax after its parent.

  Returns (best node int32[B], accepted draft tokens int32[B], bonus token int32[B]).
  """
  pred = sampling.argmax(logits)  # [B, T]
  parent_pred = jnp.take_along_axis(pred, jnp.maximum(tree.parents, 0), axis=1)
  ok = (tree.tokens == parent_pred) | (tree.parents < 0)
  acc = ~jnp.any(anc & ~ok[:, None, :], axis=-1)  # every ancestor-or-self matches
  t = tree.tokens.shape[1]
  score = jnp.where(acc, tree.depths * (t + 1) - jnp.arange(t), -1)
  best = jnp.argmax(score, axis=1).astype(jnp.int32)
  a = jnp.take_along_axis(tree.depths, best[:, None], 1)[:, 0]
  bonus = jnp.take_along_axis(pred, best[:, None], 1)[:, 0]
  return best, a, bonus


def accept_sampling(tree: tree_lib.Tree, probs: jax.Array, key: jax.Array, max_depth: int,
                    residual: bool = True):
  """Lossless tree speculative sampling with deterministic drafts (EAGLE-2 rule).

  Walk down from the root; at each node try its children in index order: accept child token x
  with probability q(x) where q is the target distribution after the current node with the
  already rejected siblings removed and renormalised. The bonus token is drawn from the final q.
  probs: [B, T, V] target (warped) distributions after each node; key: one PRNG key per row
  (or one key, see `sampling.row_keys`). `residual=False` skips removing
  rejected tokens: a deliberately wrong rule, kept so the statistical test can show it fails.
  """
  b, t = tree.tokens.shape
  def row(tokens, parents, probs, key):
    def level(_, carry):
      cur, a, q, running, key = carry
      def sibling(j, c):
        accepted, q, key = c
        key, sub = jax.random.split(key)
        x = tokens[j]
        try_it = running & (parents[j] == cur) & (accepted < 0)
        ok = try_it & (jax.random.uniform(sub) < q[x])
        rejected = try_it & ~ok & residual
        q = jnp.where(rejected, q.at[x].set(0.0), q)
        q = jnp.where(rejected, q / jnp.maximum(q.sum(), 1e-30), q)
        return jnp.where(ok, j, accepted), q, key
      accepted, q, key = jax.lax.fori_loop(1, t, sibling, (jnp.int32(-1), q, key))
      took = accepted >= 0
      cur = jnp.where(took, accepted, cur)
      q = jnp.where(took, probs[jnp.maximum(accepted, 0)], q)
      return cur, a + took.astype(jnp.int32), q, running & took, key
    init = (jnp.int32(0), jnp.int32(0), probs[0], jnp.bool_(True), key)
    cur, a, q, _, key = jax.lax.fori_loop(0, max_depth, level, init)
    bonus = jax.random.categorical(key, jnp.log(jnp.maximum(q, 1e-38)) + jnp.where(q > 0, 0.0, -jnp.inf))
    return cur, a, bonus.astype(jnp.int32)
  return jax.vmap(row)(tree.tokens, tree.parents, probs, sampling.row_keys(key, b))


def path_nodes(anc: jax.Array, depths: jax.Array, best: jax.Array, length: int) -> jax.Array:
  """int32[B, length]: node at depth j on the root->best path (best itself past its depth)."""
  on_path = jnp.take_along_axis(anc, best[:, None, None], axis=1)[:, 0]  # [B, T]
  at_depth = on_path[:, None, :] & (depths[:, None, :] == jnp.arange(length)[None, :, None])
  node = jnp.argmax(at_depth, axis=-1).astype(jnp.int32)
  return jnp.where(at_depth.any(-1), node, best[:, None])


# --------------------------------------------------------------------- cache helpers


def gather_rows(x: jax.Array, index: jax.Array) -> jax.Array:
  """x [B, S, ...], index int[B, n] -> [B, n, ...]."""
  return jnp.take_along_axis(x, index.reshape(index.shape + (1,) * (x.ndim - 2)), axis=1)


def compact_cache(cache, base: jax.Array, path: jax.Array):
  """Moves each row's accepted tree slots base + path[j] to base + j (all layers; [B, K, S, D])."""
  src = (base[:, None] + path)[:, None, :, None]  # [B, 1, n, 1]
  return [tuple(layers.write_cache(c, jnp.take_along_axis(c, src, axis=2), base) for c in kv)
          for kv in cache]


# ---------------------------------------------------------------------------- loop


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SpecState:
  """The speculative loop's state between rounds."""
  cache: KVCache          # the target's: prompt + committed tokens, length[B] per row
  dstate: Any             # the drafter's state
  root: jax.Array         # int32[B]: the pending token (emitted, not yet in the caches)
  root_logp: jax.Array    # [B, V]: the drafter's next-token log-probs after the root
  done: jax.Array         # bool[B]: the row has emitted EOS or max_new_tokens
  out: jax.Array          # int32[B, max_new_tokens + n_emit]: emitted tokens, pad after
  drafted: jax.Array      # bool[B, max_new_tokens + n_emit]: out[b, i] was an accepted draft
  count: jax.Array        # int32[B]: tokens emitted
  next_position: jax.Array  # int32[B]: position id of the root
  stats: SpecStats
  key: jax.Array          # per-row PRNG keys


@functools.partial(jax.jit, static_argnames=("cfg", "drafter", "tree_cfg", "max_new_tokens",
                                             "greedy", "top_k", "use_top_p", "eos_ids", "pad_id",
                                             "on_tokens"))
def speculative_loop(tparams, dparams, embeds, positions, attention_mask, next_position,
                     vision_mask, key, temperature, top_p, *, cfg, drafter, tree_cfg,
                     max_new_tokens, greedy, top_k, use_top_p, eos_ids, pad_id, on_tokens=None):
  """The whole speculative generation as one jittable function of arrays (see module doc).

  Args:
    tparams: the target's text params (`target.params["text"]`); dparams: the drafter's params.
    embeds: [B, P, E] prompt input embeddings (`target.embed(params, batch)`).
    positions: int32[3, B, P] (mRoPE) or [B, P]; attention_mask: bool[B, P] (left padding);
    next_position: int32[B]; vision_mask: bool[B, P] (vision tokens, for the ViSpec adaptor).
    key: one PRNG key, or one per row ([B] typed, [B, 2] raw; see `sampling.row_keys`);
    temperature, top_p: float32 scalars (used when sampling).
    Static: cfg (TextConfig), drafter, tree_cfg (TreeConfig), max_new_tokens, greedy, top_k,
    use_top_p, eos_ids (tuple), pad_id, on_tokens (None, or a host function streaming each
    round's emitted tokens, see `decoding.emit`).
  Returns: SpecOutput(tokens [B, max_new_tokens], lengths [B], stats).
  """
  b, p, _ = embeds.shape
  t, dmax = tree_cfg.num_nodes, tree_cfg.max_depth
  n_emit = dmax + 1  # most tokens one round can emit (accepted drafts + bonus)
  j = jnp.arange(n_emit)[None, :]
  mrope = positions.ndim == 3
  head = draft_lib.head_params(tparams)
  warp = dict(temperature=temperature, top_k=top_k, top_p=top_p if use_top_p else None)
  eos = jnp.asarray(eos_ids if eos_ids else (-1,), jnp.int32)
  put = jax.vmap(lambda o, v, i: jax.lax.dynamic_update_slice(o, v, (i,)))

  def draft_tree(s: SpecState):
    """The round's tree of T nodes grown by the drafter from the root."""
    step = functools.partial(drafter.step, dparams, head)
    return tree_lib.build(tree_cfg, s.root, s.root_logp, drafter.root_hidden(s.dstate), step,
                          s.dstate)

  def verify(s: SpecState, tree: tree_lib.Tree, anc):
    """Every node through the target in one forward, written as scratch from slot length."""
    x = decoder.embed_tokens(tparams, tree.tokens, embeds.dtype)
    h, kv = decoder.forward(tparams, cfg, x,
                            decoding.rope_positions(s.next_position, tree.depths, mrope),
                            s.cache.mask(anc), s.cache.layers, write_index=s.cache.length)
    return h, s.cache.replace(layers=kv)

  def accept(tree: tree_lib.Tree, anc, logits, key):
    """(path int32[B, n_emit]: root + accepted nodes (+ filler), a: accepted draft tokens,
    after int32[B, n_emit]: the token after each path node, the bonus last)."""
    if greedy:
      best, a, bonus = accept_greedy(tree, anc, logits)
    else:
      best, a, bonus = accept_sampling(tree, sampling.target_probs(logits, **warp), key, dmax)
    path = path_nodes(anc, tree.depths, best, n_emit)
    path_tokens = jnp.take_along_axis(tree.tokens, path, axis=1)
    return path, a, jnp.where(j < a[:, None], jnp.roll(path_tokens, -1, axis=1), bonus[:, None])

  def commit(s: SpecState, h, cache: KVCache, path, a, after, key) -> SpecState:
    """Emits the accepted drafts and the bonus (cut at EOS and max_new_tokens), moves the
    path's KV to the committed slots of the target cache and catches the drafter up."""
    is_eos = jnp.isin(after, eos) & (j <= a[:, None])
    first_eos = jnp.where(is_eos.any(1), jnp.argmax(is_eos, 1), n_emit)
    n_new = jnp.minimum(jnp.minimum(a + 1, first_eos + 1), max_new_tokens - s.count)
    n_new = jnp.where(s.done, 0, n_new)
    new = jnp.where(j < n_new[:, None], after, pad_id)
    decoding.emit(on_tokens, new, n_new)
    running = ~s.done
    advance = jnp.where(running, a + 1, 0)
    dstate, root_logp = drafter.commit(dparams, head, s.dstate, gather_rows(h, path), after,
                                       advance)
    stats = SpecStats(
        s.stats.target_forwards + running, s.stats.accepted + jnp.where(running, a, 0),
        s.stats.histogram + (running[:, None] & (jnp.arange(dmax + 1)[None] == a[:, None])),
        s.stats.draft_steps + jnp.where(running, len(tree_lib.level_widths(tree_cfg)) + 1, 0))
    count = s.count + n_new
    return SpecState(
        cache=cache.replace(layers=compact_cache(cache.layers, cache.length, path)).advance(advance),
        dstate=dstate, root=jnp.take_along_axis(after, a[:, None], 1)[:, 0],  # the bonus
        root_logp=root_logp,
        done=s.done | (first_eos < n_new) | (count >= max_new_tokens),
        out=put(s.out, new, s.count),
        drafted=put(s.drafted, (j < a[:, None]) & (j < n_new[:, None]), s.count), count=count,
        next_position=s.next_position + advance, stats=stats, key=key)

  def body(s: SpecState) -> SpecState:
    with jax.named_scope("draft"):  # scopes name the pieces in profiles and HLO dumps
      tree, dstate = draft_tree(s)
    with jax.named_scope("verify"):
      anc = tree_lib.ancestor_mask(tree.parents, dmax)
      h, cache = verify(s, tree, anc)
    with jax.named_scope("accept"):
      key, sub = sampling.split_rows(s.key)
      path, a, after = accept(tree, anc, decoder.logits(tparams, h), sub)
    with jax.named_scope("commit"):
      return commit(dataclasses.replace(s, dstate=dstate), h, cache, path, a, after, key)

  hidden, cache = decoding.prefill(tparams, cfg, embeds, positions, attention_mask,
                                   p + max_new_tokens + n_emit + t)
  cache = cache.replace(length=jnp.full((b,), p, jnp.int32))  # rows will advance differently
  key, sub = sampling.split_rows(sampling.row_keys(key, b))  # one key per row
  root = sampling.select_tokens(decoder.logits(tparams, hidden[:, -1]), sub, greedy=greedy, **warp)
  ctx = draft_lib.PrefillContext(hidden, embeds, attention_mask, vision_mask, root,
                                 p + max_new_tokens + n_emit + tree_cfg.scratch_slots + n_emit)
  dstate, root_logp = drafter.start(dparams, head, ctx)
  count = jnp.ones((b,), jnp.int32)
  decoding.emit(on_tokens, root[:, None], count)
  out = jnp.full((b, max_new_tokens + n_emit), pad_id, jnp.int32).at[:, 0].set(root)
  stats = SpecStats(jnp.zeros((b,), jnp.int32), jnp.zeros((b,), jnp.int32),
                    jnp.zeros((b, dmax + 1), jnp.int32), jnp.ones((b,), jnp.int32))
  state = SpecState(cache, dstate, root, root_logp, jnp.isin(root, eos) | (count >= max_new_tokens),
                    out, jnp.zeros(out.shape, bool), count, next_position, stats, key)
  state = jax.lax.while_loop(lambda s: ~jnp.all(s.done), body, state)
  return SpecOutput(state.out[:, :max_new_tokens], state.count, state.stats,
                    state.drafted[:, :max_new_tokens])


def speculative_fn(config, drafter, tree: tree_lib.TreeConfig = tree_lib.TreeConfig(),
                   max_new_tokens: int = 128, temperature: float = 0.0, top_k: int = 0,
                   top_p: float = 1.0, on_tokens=None):
  """A pure function of arrays with these settings fixed, for use inside the caller's own jit:

      fn(target_text_params, draft_params, embeds, positions, attention_mask, next_position,
         vision_mask, key) -> SpecOutput

  `config` is the target's TargetConfig; the array arguments are those of `speculative_loop`;
  `on_tokens` streams each round's tokens to a host function (see `generate`).
  """
  gen = GenerationConfig(max_new_tokens, temperature, top_k, top_p)  # validates
  if not isinstance(config, TargetConfig):
    raise TypeError(f"config must be the target's TargetConfig (target.config), got "
                    f"{type(config).__name__}")
  tree_lib.check_tree(tree, config.text.vocab_size)
  draft_lib.check_drafter(drafter, text=config.text)
  scalars, static = decoding.loop_args(config, gen, on_tokens)
  def fn(tparams, dparams, embeds, positions, attention_mask, next_position, vision_mask, key):
    return speculative_loop(tparams, dparams, embeds, positions, attention_mask, next_position,
                            vision_mask, key, *scalars, drafter=drafter, tree_cfg=tree, **static)
  return fn


def speculative_generate(target, drafter, draft_params, batch: Batch,
                         tree: tree_lib.TreeConfig = tree_lib.TreeConfig(),
                         max_new_tokens: int = 128, temperature: float = 0.0, top_k: int = 0,
                         top_p: float = 1.0, key: jax.Array | None = None,
                         embeds: jax.Array | None = None, on_tokens=None, *, seeds=None,
                         keys: jax.Array | None = None) -> SpecOutput:
  """Speculative generation with `drafter` (e.g. `vj.make_drafter(cfg)`) and its params.

  Greedy output is token-identical to `vj.generate`; with temperature > 0 it is distributed
  exactly as vanilla sampling with the same temperature/top-k/top-p. `embeds` may be passed to
  skip re-encoding the images. `on_tokens` streams each round's accepted tokens, as in
  `vj.generate`. Randomness: `key`, `seeds` or `keys`, as in `vj.generate` (with `seeds` or
  `keys` a row samples the same tokens alone and in any batch).
  """
  gen = GenerationConfig(max_new_tokens, temperature, top_k, top_p)  # validates
  tree_lib.check_tree(tree)
  draft_lib.check_drafter(drafter, draft_params)
  embeds, keys = decoding.start_request(target, batch, embeds, gen, key, seeds, keys,
                                        tree.max_depth)
  fn = speculative_fn(target.config, drafter, tree, max_new_tokens, temperature, top_k, top_p,
                      on_tokens)
  return fn(target.params["text"], draft_params, embeds, *decoding.prompt_arrays(batch),
            jnp.asarray(batch.vision_index >= 0), keys)
