"""Roofline cost model of a speculative round: predicted speedup from tau, shapes and a device.

A forward over n new tokens costs max(flops / peak, bytes / bandwidth) (+ a fixed overhead):
  flops = 2 * n * (matmul weights used) + 4 * n * S * heads * head_dim per attention layer
  bytes = weights read once + the KV cache read (S slots) + the new KV written
for a batch of rows, weights are read once and everything else scales with the rows. A round is
  verify (T tree nodes through the target, lm_head on all T)
  + one draft step per tree level (fc, one layer, lm_head on that level's tokens)
  + the draft's commit (max_depth + 1 slots through fc and the layer, fixed shape; lm_head on
    the last accepted)
and emits tau + 1 tokens, where a vanilla step (1 token through the target) emits one:
  speedup = (tau + 1) * step / round.
The image adaptor and vision tower run once per prompt and are left out. Device peaks are
datasheet numbers (dense bf16) and the model is ideal (no kernel inefficiency): read predictions as
upper bounds. A 2-core CPU is not roofline-like for few-row matmuls (docs/benchmarks.md), so
this model is for accelerators; the CPU numbers come from `python -m infer.bench pieces`.
"""

from __future__ import annotations

import dataclasses

from vispec_jax.engine import tree as tree_lib
from vispec_jax.configs import TextConfig


@dataclasses.dataclass(frozen=True)
class Device:
  name: str
  flops: float       # peak FLOP/s at the weights' dtype
  bandwidth: float   # memory bytes/s
  overhead_s: float = 0.0  # fixed cost per forward (launches, host round trips)


DEVICES = {  # datasheet peaks, dense bf16
    "h100": Device("NVIDIA H100 SXM", 989e12, 3.35e12),
    "tpu-v5e": Device("TPU v5e (1 chip)", 197e12, 819e9),
}


@dataclasses.dataclass(frozen=True)
class Stack:
  """What a forward touches: `layers` decoder layers of these shapes, plus `extra` matmul
  weights per token (the draft's fc) and the lm_head (hidden x vocab) on some of the tokens."""
  layers: int
  hidden: int
  intermediate: int
  heads: int
  kv_heads: int
  head_dim: int
  vocab: int
  extra: int = 0

  @property
  def layer_weights(self) -> int:
    e, q, kv = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim
    return e * q + 2 * e * kv + q * e + 3 * e * self.intermediate

  def cost(self, rows: int, tokens: int, lm_head_tokens: int, cache: int,
           itemsize: int) -> tuple[float, float]:
    """(flops, bytes) of one forward: `tokens` new tokens per row over `cache` slots."""
    n = rows * tokens
    weights = self.layers * self.layer_weights + self.extra
    flops = 2 * n * weights + 2 * rows * lm_head_tokens * self.hidden * self.vocab
    flops += self.layers * 4 * n * cache * self.heads * self.head_dim
    kv = 2 * self.layers * self.kv_heads * self.head_dim * itemsize * rows
    nbytes = (weights + self.hidden * self.vocab) * itemsize + kv * (cache + tokens)
    return flops, nbytes


def target_stack(text: TextConfig) -> Stack:
  return Stack(text.num_layers, text.hidden_size, text.intermediate_size, text.num_heads,
               text.num_kv_heads, text.head_dim, text.vocab_size)


def draft_stack(dcfg) -> Stack:
  """An EAGLE/ViSpec draft: fc (2E -> E) and one layer; the lm_head is the target's."""
  return Stack(1, dcfg.hidden_size, dcfg.intermediate_size, dcfg.num_heads, dcfg.num_kv_heads,
               dcfg.head_dim, dcfg.vocab_size, extra=2 * dcfg.hidden_size ** 2)


def seconds(device: Device, flops: float, nbytes: float) -> float:
  return max(flops / device.flops, nbytes / device.bandwidth) + device.overhead_s


def level_widths(tree: tree_lib.TreeConfig) -> list[int]:
  """Tokens the drafter is fed at each tree level."""
  if tree.paths is None:
    return [tree.top_k] * tree.depth
  return [len(level) for level in tree_lib.static_structure(tree.paths)["fed"]]


def round_seconds(device: Device, target: Stack, draft: Stack, tree: tree_lib.TreeConfig,
                  tau: float, rows: int = 1, cache: int = 1024, itemsize: int = 2) -> dict:
  """Time of one vanilla step and of each part of one speculative round, in seconds."""
  def t(stack, tokens, lm_rows):
    return seconds(device, *stack.cost(rows, tokens, lm_rows, cache, itemsize))
  out = {"step": t(target, 1, 1), "verify": t(target, tree.num_nodes, tree.num_nodes),
         "draft": sum(t(draft, w, w) for w in level_widths(tree)),
         "commit": t(draft, tree.max_depth + 1, 1)}
  out["round"] = out["verify"] + out["draft"] + out["commit"]
  out["speedup"] = (tau + 1) * out["step"] / out["round"]
  return out
