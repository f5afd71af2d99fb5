"""The ViSpec draft: EAGLE feature drafter + vision adaptor + global visual feature.

vispec-reference.md sections 2.4-2.5. The adaptor compresses each contiguous run of image
positions (a video is one run): `num_q` learned queries attend over the run's input embeddings.
The first num_q - 1 outputs enter the draft sequence, the last is the run's global feature g,
injected into every later position through `x = fc([e; img_fc([f; g])])` (g = 0 before the first
image).

Static shapes: the prompt keeps its P slots (the reference builds a shorter sequence). Outputs
0..num_q-2 of a run sit at its LAST num_q - 1 slots, which carry the position ids the reference
gives them; the run's other slots are not keys, so a causal mask over slots is the reference's
causal attention over the compressed sequence. All runs of all rows are handled at once (shared
queries, a segment softmax over run ids: O(P) memory, no loop over images); unlike the reference
(section 8.4), several images per row each get their own compressed tokens and g.

Einsum letters: B batch, P prompt slots, R runs (static bound), Q queries, N heads, D head dim.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from vispec_jax import layers
from vispec_jax.draft.base import DraftState, fuse
from vispec_jax.draft.eagle import EagleDrafter

Params = layers.Params


def image_runs(image_slots: jax.Array):
  """Contiguous runs of image slots per row.

  Returns (run int32[B, P]: run index of each image slot, -1 for text; count int32[B, P]: runs
  started at or before each slot, so for a text slot `count - 1` is the latest finished run).
  """
  prev = jnp.pad(image_slots[:, :-1], ((0, 0), (1, 0)))
  count = jnp.cumsum(image_slots & ~prev, axis=1, dtype=jnp.int32)
  return jnp.where(image_slots, count - 1, -1), count


def adaptor(p: Params, num_heads: int, head_dim: int, x: jax.Array, seg: jax.Array,
            num_runs: int) -> jax.Array:
  """ImgAdaptor on every run at once.

  Args:
    p: {"q": [Q, N, D], "k", "v", "o"}.
    x: [B, P, E] embeddings.
    seg: int32[B * P] run of each slot in [0, num_runs); slots outside every run have num_runs
      (an out-of-range id: not used).
  Returns:
    [num_runs, Q, E]: per run, softmax(q k^T / sqrt(D)) v through o (no mask, no RoPE, no
    norm). Runs that do not exist give zeros.
  """
  b, n, _ = x.shape
  q = p["q"]
  nq = q.shape[0]
  k = layers.linear(x, p["k"]).reshape(b, n, num_heads, head_dim)
  v = layers.linear(x, p["v"]).reshape(b, n, num_heads, head_dim)
  logits = jnp.einsum("qnd,bpnd->bpnq", q.astype(jnp.float32), k.astype(jnp.float32))
  logits = (logits * head_dim ** -0.5).reshape(b * n, num_heads, nq)
  valid = (seg < num_runs)[:, None, None]
  top = jax.lax.stop_gradient(jax.ops.segment_max(logits, seg, num_segments=num_runs))
  top = jnp.where(valid, jnp.take(top, jnp.minimum(seg, num_runs - 1), axis=0), 0.0)
  w = jnp.where(valid, jnp.exp(jnp.where(valid, logits - top, 0.0)), 0.0)
  den = jax.ops.segment_sum(w, seg, num_segments=num_runs)  # [R, N, Q]
  vf = v.reshape(b * n, num_heads, head_dim).astype(jnp.float32)
  # One query at a time keeps the weighted values at [BP, N, D] (the size of the embeddings).
  num = jax.lax.map(lambda wq: jax.ops.segment_sum(wq[..., None] * vf, seg, num_segments=num_runs),
                    jnp.moveaxis(w, -1, 0))  # [Q, R, N, D]
  out = num / jnp.maximum(jnp.moveaxis(den, -1, 0), 1e-30)[..., None]
  out = out.reshape(nq, num_runs, num_heads * head_dim).transpose(1, 0, 2)
  return layers.linear(out.astype(x.dtype), p["o"])


def img_fuse(params: Params, features: jax.Array, g: jax.Array) -> jax.Array:
  """img_fc([f; g]) -- feature first; g broadcast over f's slots."""
  g = jnp.broadcast_to(g.astype(features.dtype), features.shape)
  return layers.linear(jnp.concatenate([features, g], -1), params["img_fc"])


@dataclasses.dataclass(frozen=True)
class ViSpecDrafter(EagleDrafter):
  """ViSpec drafter (cfg.kind == "vispec"). state.extra holds g of each row's LAST image run
  (zeros without images); every tree step and commit feeds x = fc([e; img_fc([h; g])])."""

  def features_in(self, params, state: DraftState, features):
    return img_fuse(params, features, state.extra[:, None, :])

  def prompt_inputs(self, params, features, next_embeds, attention_mask, image_slots):
    """(x [B, P, E], keys bool[B, P], g of the last run [B, E]); see the module docstring.

    The adaptor reads next_embeds at image slots, i.e. e_{i+1} = the vision features. A run
    shorter than num_q - 1 slots keeps only its last outputs (the reference would give the
    others the positions of the text before the run).
    """
    b, n, e = next_embeds.shape
    nq = self.cfg.num_q
    run, count = image_runs(image_slots)
    per_row = (n + 1) // 2  # most runs P slots can hold (a text slot between two runs)
    row = per_row * jnp.arange(b, dtype=jnp.int32)[:, None]  # first run id of each row
    num_runs = b * per_row
    seg = jnp.where(run >= 0, run + row, num_runs).reshape(-1)  # one run id per (row, run)
    out = adaptor(params["adaptor"], self.cfg.num_heads, self.cfg.head_dim, next_embeds, seg,
                  num_runs)  # [R, Q, E]
    flat = out.reshape(num_runs * nq, e)
    # Compressed tokens: output j of a run (j < nq - 1) sits at slot end - (nq - 2 - j).
    slot = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (b, n))
    end = jax.ops.segment_max(slot.reshape(-1), seg, num_segments=num_runs)
    to_end = jnp.take(end, jnp.minimum(seg, num_runs - 1)).reshape(b, n) - slot
    compressed = (run >= 0) & (to_end < nq - 1)
    tok_index = (jnp.maximum(run, 0) + row) * nq + jnp.clip(nq - 2 - to_end, 0, nq - 1)
    tokens = jnp.take(flat, tok_index, axis=0)  # [B, P, E]
    # Global feature of the latest finished run for text slots; zero before the first image.
    latest = count - 1
    g = jnp.take(flat, (jnp.maximum(latest, 0) + row) * nq + nq - 1, axis=0)
    g = jnp.where(((latest >= 0) & self.cfg.global_feature)[..., None], g, 0)
    x = fuse(params, next_embeds, img_fuse(params, features, g))
    x = jnp.where(compressed[..., None], tokens.astype(x.dtype), x)
    keys = attention_mask & (~image_slots | compressed)
    # state.extra: g of each row's last run (g at the last slot), what later draft calls see.
    return x, keys, g[:, -1].astype(x.dtype)
