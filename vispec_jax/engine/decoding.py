"""Vanilla generation: one jitted program (prefill + a `lax.while_loop` over tokens).

Cache layout (a `KVCache`): S = P + max_new_tokens slots per row; the prompt (left-padded to P)
fills slots [0, P) and generated token s is written at slot P + s - 1 when it is fed back, so
every row writes the same slot each step (one in-place dynamic-update-slice per layer). A key
slot is visible if it holds a real prompt token or an already generated one; positions continue
per row from `batch.next_position`.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import io_callback

from vispec_jax.engine import sampling
from vispec_jax.engine.kv_cache import KVCache, prompt_mask
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


def rope_positions(next_position: jax.Array, offsets, mrope: bool) -> jax.Array:
  """Position ids next_position[b] + offsets ([B, t], or a scalar for one token): int32[B, t],
  or [3, B, t] for mRoPE (every section advances alike past the prompt)."""
  pos = next_position[:, None] + offsets
  return jnp.broadcast_to(pos, (3,) + pos.shape) if mrope else pos


def prefill(params, cfg: TextConfig, embeds, positions, attention_mask, cache_len: int):
  """Runs the prompt through the LM into a fresh cache of `cache_len` slots.

  Returns (hidden [B, P, E], KVCache holding the prompt: length P, the same for every row).
  """
  b, p, _ = embeds.shape
  valid = attention_mask.astype(bool)
  cache = decoder.init_cache(cfg, b, cache_len, embeds.dtype)
  hidden, cache = decoder.forward(params, cfg, embeds, positions, prompt_mask(valid, cache_len),
                                  cache, write_index=0)
  return hidden, KVCache(cache, valid, jnp.int32(p))


def emit(on_tokens, tokens: jax.Array, counts: jax.Array) -> None:
  """Streaming: hands one step's new tokens (row b's are tokens[b, :counts[b]]) to the host
  function `on_tokens`, in order. `on_tokens` is static: when it is None (the default) the
  compiled program has no callback and no host transfer."""
  if on_tokens is not None:
    io_callback(on_tokens, None, tokens, counts, ordered=True)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class GenState:
  """The vanilla loop's state before step `step` (which feeds token step - 1 back)."""
  step: jax.Array     # int32: next token to generate
  tokens: jax.Array   # int32[B, max_new_tokens]: generated so far, pad after
  done: jax.Array     # bool[B]: the row has emitted EOS or is full
  lengths: jax.Array  # int32[B]: generated tokens per row, including EOS
  cache: KVCache      # length P + step - 1, the same for every row
  key: jax.Array      # per-row PRNG keys


@functools.partial(jax.jit, static_argnames=("cfg", "max_new_tokens", "greedy", "top_k",
                                             "use_top_p", "eos_ids", "pad_id", "on_tokens"))
def _generate(params, embeds, positions, attention_mask, next_position, key, temperature, top_p,
              *, cfg, max_new_tokens, greedy, top_k, use_top_p, eos_ids, pad_id, on_tokens=None):
  b, p, _ = embeds.shape
  mrope = positions.ndim == 3
  select = functools.partial(sampling.select_tokens, greedy=greedy, temperature=temperature,
                             top_k=top_k, top_p=top_p if use_top_p else None)
  hidden, cache = prefill(params, cfg, embeds, positions, attention_mask, p + max_new_tokens)
  key, sub = sampling.split_rows(sampling.row_keys(key, b))  # one key per row
  first = select(decoder.logits(params, hidden[:, -1]), sub)
  eos = jnp.asarray(eos_ids if eos_ids else (-1,), jnp.int32)
  lengths = jnp.ones((b,), jnp.int32)
  emit(on_tokens, first[:, None], lengths)

  def cond(s: GenState):
    return (s.step < max_new_tokens) & ~jnp.all(s.done)

  def body(s: GenState):
    prev = jax.lax.dynamic_slice(s.tokens, (0, s.step - 1), (b, 1))
    x = decoder.embed_tokens(params, prev, embeds.dtype)
    h, kv = decoder.forward(params, cfg, x, rope_positions(next_position, s.step - 1, mrope),
                            s.cache.mask(jnp.ones((1, 1), bool)), s.cache.layers,
                            write_index=s.cache.length)
    key, sub = sampling.split_rows(s.key)
    nxt = jnp.where(s.done, pad_id, select(decoder.logits(params, h[:, 0]), sub))
    emit(on_tokens, nxt[:, None], (~s.done).astype(jnp.int32))
    return GenState(step=s.step + 1,
                    tokens=jax.lax.dynamic_update_slice(s.tokens, nxt[:, None], (0, s.step)),
                    done=s.done | jnp.isin(nxt, eos), lengths=s.lengths + (~s.done).astype(jnp.int32),
                    cache=s.cache.replace(layers=kv).advance(1), key=key)

  tokens = jnp.full((b, max_new_tokens), pad_id, jnp.int32).at[:, 0].set(first)
  state = GenState(jnp.int32(1), tokens, jnp.isin(first, eos), lengths, cache, key)
  state = jax.lax.while_loop(cond, body, state)
  return GenerateOutput(state.tokens, state.lengths)


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
  embeds, keys = start_request(target, batch, embeds, gen, key, seeds, keys)
  scalars, static = loop_args(target.config, gen, on_tokens)
  return _generate(target.params["text"], embeds, *prompt_arrays(batch), keys, *scalars, **static)


def start_request(target, batch: Batch, embeds, gen: GenerationConfig, key, seeds, keys,
                  tree_depth: int = 0):
  """`check_request`, then (the prompt embeddings, computed unless given; per-row keys)."""
  check_request(target, batch, embeds, gen, tree_depth)
  keys = sampling.request_keys(batch.batch_size, key, seeds, keys)
  return (target.embed(target.params, batch) if embeds is None else embeds), keys


def prompt_arrays(batch: Batch) -> tuple[jax.Array, ...]:
  """(positions, attention_mask, next_position) of a batch, as the loops take them."""
  return (jnp.asarray(batch.positions), jnp.asarray(batch.attention_mask),
          jnp.asarray(batch.next_position))


def loop_args(config: TargetConfig, gen: GenerationConfig, on_tokens) -> tuple[tuple, dict]:
  """What both jitted loops take for these settings: the traced scalars (temperature, top_p)
  and the static keywords."""
  return ((jnp.float32(max(gen.temperature, 1e-6)), jnp.float32(gen.top_p)),
          dict(cfg=config.text, max_new_tokens=gen.max_new_tokens, greedy=gen.temperature == 0,
               top_k=gen.top_k, use_top_p=gen.top_p < 1.0, eos_ids=tuple(config.eos_token_ids),
               pad_id=config.pad_token_id, on_tokens=on_tokens))


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
