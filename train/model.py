"""The math of one training step: target features, draft passes, losses, per-depth accuracy.

B batch, L padded length (right padding), E hidden, V vocab. EAGLE alignment (vispec-reference.md
2.5, 6.6): draft position i sees (f_i + noise, e_{i+1}) (f the target's last-layer features, e
its input embeddings) and its output h_i is compared with f_{i+1} and p_{i+1} = softmax(lm_head(
f_{i+1})). EAGLE / ViSpec run 1 + mtp_steps passes, each fed the previous pass's outputs (the
reference's anti-shortcut scheme, 6.4); Medusa head k on f_i predicts f_{i+k+1}. docs/training.md.
"""

from __future__ import annotations

import dataclasses
import types
from typing import Any

import jax
import jax.numpy as jnp

from train import lm, losses
from vispec_jax import draft as draft_lib
from vispec_jax.draft.medusa import head_forward
from vispec_jax.models import decoder


@dataclasses.dataclass(frozen=True)
class Spec:
  """Everything static about a training step (hashable: a jit static argument)."""
  drafter: Any                       # EagleDrafter / ViSpecDrafter / MedusaDrafter
  text: Any                          # target TextConfig
  weights: tuple[tuple[str, float], ...]
  mtp_steps: int = 0
  mask_offset: int = 2
  noise_scale: float = 0.0
  noise_ref_len: int = 512
  noise_per_length: bool = True
  vision: Any = None                 # train.targets.VisionAdapter (online mode with images)
  precomputed: bool = False

  @property
  def kind(self) -> str:
    return self.drafter.cfg.kind


def shift_left(x: jax.Array, n: int = 1) -> jax.Array:
  """x[:, i] <- x[:, i + n], zeros at the end."""
  if n == 0:
    return x
  pad = [(0, 0)] * x.ndim
  pad[1] = (0, n)
  return jnp.pad(x[:, n:], pad)


def target_features(spec: Spec, target_params, batch) -> tuple[jax.Array, jax.Array]:
  """(features f, input embeddings e) [B, L, E] of the frozen target (no gradient)."""
  if spec.precomputed:
    return batch["features"], batch["embeds"]
  hidden, embeds = lm.forward(spec.text, spec.vision, target_params, batch)
  return jax.lax.stop_gradient(hidden), jax.lax.stop_gradient(embeds)


def draft_inputs(batch, embeds: jax.Array):
  """(next embeddings e_{i+1} (zero past the end), image_slots: token i + 1 is a vision token)."""
  attn = batch["attention_mask"]
  nxt = shift_left(attn)
  next_embeds = jnp.where(nxt[..., None], shift_left(embeds), 0).astype(embeds.dtype)
  image_slots = shift_left(batch["vision_index"] >= 0) & attn
  return next_embeds, image_slots


def position_mask(batch, shift: int, offset: int) -> jax.Array:
  """bool[B, L]: draft position i (predicting f_{i+shift}) is supervised iff token
  i + shift - 1 + offset is an answer token and f_{i+shift} exists."""
  answer = shift_left(batch["answer"], shift - 1 + offset)
  i = jnp.arange(answer.shape[1])[None, :]
  return answer & (i + shift < batch["lengths"][:, None])


def add_noise(spec: Spec, key: jax.Array, f: jax.Array, lengths: jax.Array) -> jax.Array:
  """Uniform feature noise: f + (U[0,1) - 0.5) * scale * (ref_len / S), S = sequence length."""
  if not spec.noise_scale:
    return f
  scale = jnp.full(lengths.shape, spec.noise_scale, jnp.float32)
  if spec.noise_per_length:
    scale = scale * spec.noise_ref_len / jnp.maximum(lengths, 1).astype(jnp.float32)
  u = jax.random.uniform(key, f.shape, jnp.float32)
  return (f.astype(jnp.float32) + (u - 0.5) * scale[:, None, None]).astype(f.dtype)


def passes(spec: Spec, params, f_in: jax.Array, next_embeds, batch, image_slots):
  """(draft outputs h [P, B, L, E], shifts: P ints): pass k's h_i is compared with f_{i+s_k}.
  EAGLE / ViSpec: a `lax.scan` (the draft compiles once), every shift 1; Medusa: head k, k + 1."""
  if spec.kind == "medusa":
    n = spec.drafter.cfg.medusa_heads
    return jnp.stack([head_forward(params, k, f_in) for k in range(n)]), tuple(range(1, n + 1))
  attn = batch["attention_mask"]

  def one_pass(feats, _):
    h = spec.drafter.prompt_forward(params, feats, next_embeds, attn, image_slots)[0]
    fed = jnp.concatenate([f_in[:, :1], h[:, :-1].astype(f_in.dtype)], axis=1)  # shifted by 1
    return fed, h

  _, hs = jax.lax.scan(one_pass, f_in, None, length=1 + spec.mtp_steps)
  return hs, (1,) * (1 + spec.mtp_steps)


def _per_pass(fn, shifts):
  """Stacks fn(shift) over the passes (a broadcast when every pass has the same shift)."""
  if len(set(shifts)) == 1:
    a = fn(shifts[0])
    return jnp.broadcast_to(a, (len(shifts),) + a.shape)
  return jnp.stack([fn(s) for s in shifts])


def loss_fn(spec: Spec, params, head, f, embeds, batch, key):
  """(total loss, metrics) of one batch: the terms pool the supervised positions of all passes
  (the reference's loss over the concatenated passes); metrics: each term, acc_k, positions."""
  f_in = add_noise(spec, key, f, batch["lengths"])
  next_embeds, image_slots = draft_inputs(batch, embeds)
  p_all = losses.target_probs(decoder.logits(head, f))      # p_j for every position j
  hs, shifts = passes(spec, params, f_in, next_embeds, batch, image_slots)
  p = _per_pass(lambda s: shift_left(p_all, s), shifts)
  target = _per_pass(lambda s: shift_left(f, s), shifts)
  mask = _per_pass(lambda s: position_mask(batch, s, spec.mask_offset), shifts)
  z = decoder.logits(head, hs)
  weights = dict(spec.weights)
  values = losses.terms(hs, target, z, p, mask, weights)
  total = losses.total_loss(values, weights)
  metrics = {f"loss/{k}": v for k, v in values.items()}
  hit = (jnp.argmax(z, -1) == jnp.argmax(p, -1)).astype(jnp.float32)
  for k in range(len(shifts)):
    metrics[f"acc_{k + 1}"] = losses.masked_mean(hit[k], mask[k])
  metrics["positions"] = jnp.sum(mask[0])
  metrics["loss"] = total
  return total, metrics


def chain_hidden(spec: Spec, params, f, next_embeds, attn, image_slots, depth: int):
  """[h_0, ..., h_{depth-1}], each [B, L, E]: h_k at t is the draft's output after k steps on its
  own features from the real ones up to t - k (so it predicts f_{t+1}, like h_0). One layer call
  per step (exact for the one-layer draft): step-k queries attend the real keys up to the
  chain's start plus the chain's own k keys, in a cache of depth x L slots."""
  drafter, cfg = spec.drafter, spec.drafter.cfg
  b, L, _ = f.shape
  x, keys, extra = drafter.prompt_inputs(params, f, next_embeds, attn, image_slots)
  pos = draft_lib.prompt_positions(attn)
  slots = depth * L
  cache = (jnp.zeros((b, cfg.num_kv_heads, slots, cfg.head_dim), x.dtype),) * 2  # [B, K, S, D]
  key_block = jnp.arange(slots) // L            # pass that wrote each cache slot
  key_pos = jnp.arange(slots) % L
  key_ok = jnp.where(key_block[None] == 0, jnp.tile(keys, (1, depth)), jnp.tile(attn, (1, depth)))
  t = jnp.arange(L)[:, None]
  state = types.SimpleNamespace(extra=extra)    # what features_in reads (ViSpec: g)
  hs = []
  for k in range(depth):
    if k:
      prev = jnp.pad(hs[-1][:, :-1], ((0, 0), (1, 0), (0, 0)))  # h_{k-1} at t - 1: fed feature
      x = draft_lib.fuse(params, next_embeds, drafter.features_in(params, state, prev))
    start = t - k                                                # the chain's last real position
    sees = (((key_block[None] == 0) & (key_pos[None] <= start))
            | ((key_block[None] >= 1) & (key_block[None] <= k)
               & (key_pos[None] == start + key_block[None])))   # [L, slots]
    h, cache = draft_lib.layer_forward(params, cfg, x, pos, sees[None] & key_ok[:, None, :],
                                       cache, k * L)
    hs.append(h)
  return hs


def depth_accuracy(spec: Spec, params, head, f, embeds, batch, depth: int) -> dict:
  """Top-1 accuracy of draft step k = 1..depth given the previous k - 1 (data) tokens right, the
  draft on its own features (`chain_hidden`); Medusa: of each head."""
  next_embeds, image_slots = draft_inputs(batch, embeds)
  p_all = decoder.logits(head, f)
  out = {}
  if spec.kind == "medusa":
    for k in range(min(depth, spec.drafter.cfg.medusa_heads)):
      z = decoder.logits(head, head_forward(params, k, f))
      mask = position_mask(batch, k + 1, spec.mask_offset)
      hit = jnp.argmax(z, -1) == jnp.argmax(shift_left(p_all, k + 1), -1)
      out[f"acc_{k + 1}"] = losses.masked_mean(hit.astype(jnp.float32), mask)
    return out
  hs = chain_hidden(spec, params, f, next_embeds, batch["attention_mask"], image_slots, depth)
  target_tok = jnp.argmax(shift_left(p_all, 1), -1)
  mask = position_mask(batch, 1, spec.mask_offset)
  t = jnp.arange(f.shape[1])[None, :]
  for k, h in enumerate(hs):
    hit = (jnp.argmax(decoder.logits(head, h), -1) == target_tok).astype(jnp.float32)
    out[f"acc_{k + 1}"] = losses.masked_mean(hit, mask & (t >= k))
  return out
