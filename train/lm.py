"""The target as a language model over a training batch (train/data.py's keys): its forward pass
and the next-token loss on answer tokens. The draft trainer reads its features
(`model.target_features`); the target trainer (proj/scenes/train_target.py) trains it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from train import losses
from vispec_jax.models import decoder


def forward(text_cfg, vision, params, batch) -> tuple[jax.Array, jax.Array]:
  """(last-layer hidden after the final norm, input embeddings), both [B, L, E]. vision: a
  `targets.VisionAdapter` (None: text only); params: {"text", "vision"}."""
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


def answer_loss(text_cfg, vision, params, batch, token_weight=None) -> tuple[jax.Array, dict]:
  """(mean cross-entropy of the answer tokens, metrics: loss, top-1 token_acc, tokens). Position
  i predicts token i + 1 and is supervised iff that is an answer token. token_weight (float
  [vocab], optional) weighs each position by the token it predicts: the objective is then the
  weighted mean, while metrics["loss"] stays the plain mean (comparable across weights)."""
  hidden, _ = forward(text_cfg, vision, params, batch)
  logits = decoder.logits(params["text"], hidden)                 # fp32 [B, L, V]
  ids = batch["ids"]
  nxt = jnp.pad(ids[:, 1:], ((0, 0), (0, 1)))
  mask = jnp.pad(batch["answer"][:, 1:] & batch["attention_mask"][:, 1:], ((0, 0), (0, 1)))
  logp = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(logp, nxt[..., None], axis=-1)[..., 0]
  loss = losses.masked_mean(nll, mask)
  objective = loss
  if token_weight is not None:
    w = mask * token_weight[nxt]
    objective = jnp.sum(nll * w) / jnp.maximum(jnp.sum(w), 1e-6)
  hit = (jnp.argmax(logits, -1) == nxt).astype(jnp.float32)
  return objective, {"loss": loss, "token_acc": losses.masked_mean(hit, mask),
                "tokens": jnp.sum(mask)}
