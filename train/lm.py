"""The target as a language model over a training batch: its forward pass (vision tower vmapped
over the batch's images, then the decoder) and the next-token loss on answer tokens.

Shared by the draft trainer (the frozen target's features, `model.target_features`) and the
target trainer (`proj/scenes/train_target.py`, which trains these same weights from scratch).

Batch keys (train/data.py): ids, attention_mask, answer, positions [B, R, L], vision_index and,
with images, pixels.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from train import losses
from vispec_jax.models import decoder


def forward(text_cfg, vision, params, batch) -> tuple[jax.Array, jax.Array]:
  """(last-layer hidden after the final norm, input embeddings), both [B, L, E].

  vision: a `train.targets.VisionAdapter` (or None for text-only data); params: {"text",
  "vision"}. Positions are 3-D (mRoPE) when `text_cfg.mrope_section` is set."""
  text = params["text"]
  ids, attn = batch["ids"], batch["attention_mask"]
  dtype = text["embed"].dtype
  embeds = decoder.embed_tokens(text, ids, dtype)
  if vision is not None and "pixels" in batch:
    vis = vision.encode(params["vision"], batch["pixels"]).astype(dtype)  # [B, NV, E]
    index = batch["vision_index"]
    picked = jnp.take_along_axis(vis, jnp.maximum(index, 0)[..., None], axis=1)
    embeds = jnp.where((index >= 0)[..., None], picked, embeds)
  pos = batch["positions"]                                       # [B, R, L]
  pos = jnp.transpose(pos, (1, 0, 2)) if text_cfg.mrope_section is not None else pos[:, 0]
  t = ids.shape[1]
  mask = jnp.tril(jnp.ones((t, t), bool))[None] & attn[:, None, :]
  hidden, _ = decoder.forward(text, text_cfg, embeds, pos, mask)
  return hidden, embeds


def answer_loss(text_cfg, vision, params, batch) -> tuple[jax.Array, dict]:
  """(mean cross-entropy of every answer token given the tokens before it, metrics).

  Position i predicts token i + 1; it is supervised iff token i + 1 is an answer token (the
  prompt and the image are context only). Metrics: loss, top-1 token accuracy, token count."""
  hidden, _ = forward(text_cfg, vision, params, batch)
  logits = decoder.logits(params["text"], hidden)                 # fp32 [B, L, V]
  ids = batch["ids"]
  nxt = jnp.pad(ids[:, 1:], ((0, 0), (0, 1)))
  mask = jnp.pad(batch["answer"][:, 1:] & batch["attention_mask"][:, 1:], ((0, 0), (0, 1)))
  logp = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(logp, nxt[..., None], axis=-1)[..., 0]
  loss = losses.masked_mean(nll, mask)
  hit = (jnp.argmax(logits, -1) == nxt).astype(jnp.float32)
  return loss, {"loss": loss, "token_acc": losses.masked_mean(hit, mask),
                "tokens": jnp.sum(mask)}
