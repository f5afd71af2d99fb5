"""Vanilla generation: one jitted program (prefill + a `lax.while_loop` over tokens).

Cache layout: S = P + max_new_tokens slots per row; the prompt (left-padded to P) fills slots
[0, P) and generated token s is written at slot P + s - 1 when it is fed back, so every row writes
the same slot each step (one in-place dynamic-update-slice per layer). A key slot is visible if it
holds a real prompt token or an already generated one; positions continue per row from
`batch.next_position`.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import io_callback

from vispec_jax.engine import sampling
from vispec_jax.configs import GenerationConfig, TargetConfig, TextConfig
from vispec_jax.models import decoder
from vispec_jax.processing import Batch, InputError


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class GenerateOutput:
  """tokens: int32[B, max_new_tokens] (pad after each row's end); lengths: int32[B], the
  generated tokens of each row including its EOS."""
  tokens: jax.Array
  lengths: jax.Array


def _positions(next_position: jax.Array, offset, mrope: bool, t: int = 1) -> jax.Array:
  pos = next_position[:, None] + offset + jnp.arange(t, dtype=jnp.int32)[None, :]  # [B, t]
  return jnp.broadcast_to(pos, (3,) + pos.shape) if mrope else pos


def prefill(params, cfg: TextConfig, embeds, positions, attention_mask, cache_len: int):
  """Runs the prompt through the LM into a fresh cache of `cache_len` slots.

  Returns (hidden [B, P, E], cache, key_valid bool[B, cache_len]).
  """
  b, p, _ = embeds.shape
  cache = decoder.init_cache(cfg, b, cache_len, embeds.dtype)
  key_valid = jnp.zeros((b, cache_len), bool).at[:, :p].set(attention_mask)
  causal = jnp.arange(cache_len)[None, :] <= jnp.arange(p)[:, None]  # [P, S]
  mask = causal[None] & key_valid[:, None, :]
  hidden, cache = decoder.forward(params, cfg, embeds, positions, mask, cache, write_index=0)
  return hidden, cache, key_valid


def emit(on_tokens, tokens: jax.Array, counts: jax.Array) -> None:
  """Streaming: hands one step's new tokens (row b's are tokens[b, :counts[b]]) to the host
  function `on_tokens`, in order. `on_tokens` is static: when it is None (the default) the
  compiled program has no callback and no host transfer."""
  if on_tokens is not None:
    io_callback(on_tokens, None, tokens, counts, ordered=True)


@functools.partial(jax.jit, static_argnames=("cfg", "max_new_tokens", "greedy", "top_k",
                                             "use_top_p", "eos_ids", "pad_id", "on_tokens"))
def _generate(params, embeds, positions, attention_mask, next_position, key, temperature, top_p,
              *, cfg, max_new_tokens, greedy, top_k, use_top_p, eos_ids, pad_id, on_tokens=None):
  b, p, _ = embeds.shape
  mrope = positions.ndim == 3
  select = functools.partial(sampling.select_tokens, greedy=greedy, temperature=temperature,
                             top_k=top_k, top_p=top_p if use_top_p else None)
  hidden, cache, key_valid = prefill(params, cfg, embeds, positions, attention_mask,
                                     p + max_new_tokens)
  key, sub = sampling.split_rows(sampling.row_keys(key, b))  # one key per row
  first = select(decoder.logits(params, hidden[:, -1]), sub)
  eos = jnp.asarray(eos_ids if eos_ids else (-1,), jnp.int32)
  tokens = jnp.full((b, max_new_tokens), pad_id, jnp.int32).at[:, 0].set(first)
  done = jnp.isin(first, eos)
  lengths = jnp.ones((b,), jnp.int32)
  emit(on_tokens, first[:, None], lengths)

  def cond(state):
    step, _, done, *_ = state
    return (step < max_new_tokens) & ~jnp.all(done)

  def body(state):
    step, tokens, done, lengths, cache, key_valid, key = state
    slot = p + step - 1  # where the previous token's keys/values go
    key_valid = jax.lax.dynamic_update_slice(key_valid, jnp.ones((b, 1), bool), (0, slot))
    prev = jax.lax.dynamic_slice(tokens, (0, step - 1), (b, 1))
    x = decoder.embed_tokens(params, prev, embeds.dtype)
    h, cache = decoder.forward(params, cfg, x, _positions(next_position, step - 1, mrope),
                               key_valid[:, None, :], cache, write_index=slot)
    key, sub = sampling.split_rows(key)
    nxt = select(decoder.logits(params, h[:, 0]), sub)
    nxt = jnp.where(done, pad_id, nxt)
    emit(on_tokens, nxt[:, None], (~done).astype(jnp.int32))
    tokens = jax.lax.dynamic_update_slice(tokens, nxt[:, None], (0, step))
    lengths = lengths + (~done).astype(jnp.int32)
    done = done | jnp.isin(nxt, eos)
    return step + 1, tokens, done, lengths, cache, key_valid, key

  state = (jnp.int32(1), tokens, done, lengths, cache, key_valid, key)
  _, tokens, _, lengths, *_ = jax.lax.while_loop(cond, body, state)
  return GenerateOutput(tokens, lengths)


def generate(target, batch: Batch, max_new_tokens: int = 128, temperature: float = 0.0,
             top_k: int = 0, top_p: float = 1.0, key: jax.Array | None = None,
             embeds: jax.Array | None = None, on_tokens=None, *, seeds=None,
             keys: jax.Array | None = None) -> GenerateOutput:
  """Generates up to `max_new_tokens` per row; greedy when temperature == 0.

  One compiled program per (batch shape, max_new_tokens, sampling mode); prompts of the same
  length bucket reuse it. `embeds` may be passed to skip re-encoding the images. `on_tokens`
  streams: a host function `f(tokens int32[B, n], counts int32[B])` called with each step's new
  tokens (e.g. `vj.TextStreamer`); it is part of the compiled program, so reuse one object.
  Randomness (at most one of): `key`, one PRNG key for the batch (row b uses fold_in(key, b));
  `seeds`, one integer per row, or `keys`, one PRNG key per row: a row then samples the same
  tokens alone and in any batch (see docs/api.md, "Seeds and batch invariance").
  Raises ValueError (InputError for the batch and prompt length) on bad arguments.
  """
  gen = GenerationConfig(max_new_tokens, temperature, top_k, top_p)  # validates
  check_request(target, batch, embeds, gen)
  keys = sampling.request_keys(batch.batch_size, key, seeds, keys)
  if embeds is None:
    embeds = target.embed(target.params, batch)
  cfg = target.config
  return _generate(
      target.params["text"], embeds, jnp.asarray(batch.positions),
      jnp.asarray(batch.attention_mask), jnp.asarray(batch.next_position), keys,
      jnp.float32(max(gen.temperature, 1e-6)), jnp.float32(gen.top_p),
      cfg=cfg.text, max_new_tokens=gen.max_new_tokens, greedy=gen.temperature == 0,
      top_k=gen.top_k, use_top_p=gen.top_p < 1.0, eos_ids=tuple(cfg.eos_token_ids),
      pad_id=cfg.pad_token_id, on_tokens=on_tokens)


def check_request(target, batch: Batch, embeds, gen: GenerationConfig, tree_depth: int = 0):
  """Host-side checks shared by `generate` and `speculative_generate`, before any compute:
  argument kinds, `embeds` (when given) shaped for the batch. The whole sequence must fit the model's position limit
  (`TextConfig.max_position_embeddings`): the longest prompt + max_new_tokens, plus, for
  speculative decoding, the tree_depth - 1 positions its deepest verified node may look past
  the last generated token."""
  if not isinstance(getattr(target, "config", None), TargetConfig) or not hasattr(target, "params"):
    raise TypeError(f"target must be a vj.Target (vj.load_target), got {type(target).__name__}")
  if not isinstance(batch, Batch):
    raise TypeError(f"batch must be a vj.Batch (vj.prepare(target, prompts, images=...)), got "
                    f"{type(batch).__name__}")
  text = target.config.text
  if gen.top_k > text.vocab_size:
    raise ValueError(f"top_k {gen.top_k} is larger than the vocabulary ({text.vocab_size})")
  lengths = batch.prompt_lengths
  longest = int(np.max(lengths)) if getattr(lengths, "is_fully_addressable", True) else 0
  need = longest + gen.max_new_tokens + max(tree_depth - 1, 0)
  if need > text.max_position_embeddings:
    tree = f" + {tree_depth - 1} (tree depth {tree_depth} - 1)" if tree_depth > 1 else ""
    raise InputError(f"prompt of {longest} tokens + max_new_tokens {gen.max_new_tokens}{tree} = "
                     f"{need} positions, more than the model's limit of "
                     f"{text.max_position_embeddings} (max_position_embeddings)")
  if embeds is None:
    return
  b, p = batch.input_ids.shape
  want = (b, p, text.hidden_size)
  shape = tuple(getattr(embeds, "shape", ()))
  if shape != want:
    raise InputError(f"embeds has shape {shape} but this batch needs {want} ({b} rows, {p} "
                     f"tokens, hidden size {text.hidden_size}): pass "
                     f"target.embed(target.params, batch) of this same batch")


def trim(output: GenerateOutput) -> list[list[int]]:
  """Per-row token lists without padding (host side)."""
  tokens, lengths = np.asarray(output.tokens), np.asarray(output.lengths)
  return [tokens[i, :lengths[i]].tolist() for i in range(tokens.shape[0])]
