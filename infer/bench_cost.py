"""`python -m infer.bench cost`: predicted speedup of speculative decoding on accelerators.

A roofline model of the benchmark model, Qwen2.5-VL-7B and any `--target` folder, each with its
ViSpec draft, at datasheet peaks (dense bf16, ideal kernels: read predictions as upper bounds).
A forward over n new tokens costs max(flops / peak, bytes / bandwidth) (+ a fixed overhead):
  flops = 2 * n * (matmul weights used) + 4 * n * S * heads * head_dim per attention layer
  bytes = weights read once + the KV cache read (S slots) + the new KV written
(for a batch of rows, weights are read once and everything else scales with the rows). A round
is verify (T tree nodes through the target, lm_head on all T) + one draft step per tree level +
the draft's commit (max_depth + 1 slots, lm_head on the last accepted); it emits tau + 1 tokens,
a vanilla step one: speedup = (tau + 1) * step / round. The vision tower (once per prompt) is
left out. A 2-core CPU is not roofline-like (docs/benchmarks.md): see `infer.bench pieces`.
"""

from __future__ import annotations

import dataclasses
import json
import os

from infer import bench_common as common, cli
from infer.memory import QWEN2_5_VL_7B
from vispec_jax import draft, models, testing
from vispec_jax.configs import TextConfig
from vispec_jax.engine import tree as tree_lib

TREES = ("chain4", "dynamic-d3k8t30")  # default --trees (any vj.tree.from_spec name)


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


def round_seconds(device: Device, target: Stack, draft: Stack, tree: tree_lib.TreeConfig,
                  tau: float, rows: int = 1, cache: int = 1024, itemsize: int = 2) -> dict:
  """Time of one vanilla step and of each part of one speculative round, in seconds."""
  def t(stack, tokens, lm_rows):
    return seconds(device, *stack.cost(rows, tokens, lm_rows, cache, itemsize))
  out = {"step": t(target, 1, 1), "verify": t(target, tree.num_nodes, tree.num_nodes),
         "draft": sum(t(draft, w, w) for w in tree_lib.level_widths(tree)),
         "commit": t(draft, tree.max_depth + 1, 1)}
  out["round"] = out["verify"] + out["draft"] + out["commit"]
  out["speedup"] = (tau + 1) * out["step"] / out["round"]
  return out


def run_cost(args) -> list[dict]:
  qwen_7b = models.config_from_hf(QWEN2_5_VL_7B).text
  bench = models.config_from_hf(common.bench_config(  # infer.bench's model (shapes only)
      testing.tiny_tokenizer(), common.BENCH_VOCAB, common.BENCH_INTERMEDIATE,
      **common.BENCH_MODEL)).text
  targets = {"bench-61M": bench, "qwen2.5-vl-7b": qwen_7b}
  for folder in args.target or []:  # e.g. the shipped scenes target
    with open(os.path.join(folder, "config.json")) as f:
      targets[os.path.basename(os.path.normpath(folder))] = models.config_from_hf(json.load(f)).text
  rows = []
  print(f"{'device':<18}{'target':<15}{'tree':<17}{'tau':>5}{'step ms':>9}{'verify':>8}"
        f"{'draft':>8}{'commit':>8}{'speedup':>9}")
  for dev_name in args.devices:
    device = DEVICES[dev_name]
    for t_name, text in targets.items():
      tstack = target_stack(text)
      dstack = draft_stack(draft.DraftConfig.for_target(text, "vispec"))
      for tree_name in args.trees:
        tree = tree_lib.from_spec(tree_name)
        for tau in args.tau:
          r = round_seconds(device, tstack, dstack, tree, tau, rows=args.batch, cache=args.cache,
                            itemsize=args.itemsize)
          rows.append({"device": dev_name, "target": t_name, "tree": tree_name, "tau": tau,
                       **r})
          ms = {k: 1e3 * r[k] for k in ("step", "verify", "draft", "commit")}
          print(f"{dev_name:<18}{t_name:<15}{tree_name:<17}{tau:>5.1f}{ms['step']:>9.3f}"
                f"{ms['verify']:>8.3f}{ms['draft']:>8.3f}{ms['commit']:>8.3f}"
                f"{r['speedup']:>8.2f}x")
  return rows


def add_parser(sub):
  p = sub.add_parser("cost", help="predicted speedup on accelerators (roofline cost model)")
  p.add_argument("--devices", nargs="+", default=list(DEVICES), choices=list(DEVICES))
  p.add_argument("--trees", nargs="+", default=list(TREES),
                 help="dynamic, dynamic-dDkKtT or chainN (vispec_jax.engine.tree.from_spec)")
  p.add_argument("--target", nargs="+", default=None, metavar="DIR",
                 help="also these target folders (their config.json), e.g. models/scenes/target")
  p.add_argument("--tau", type=float, nargs="+", default=[1.0, 2.0, 3.0, 4.0])
  p.add_argument("--batch", type=int, default=1)
  p.add_argument("--cache", type=int, default=1024, help="KV cache slots in use per row")
  p.add_argument("--itemsize", type=int, default=2, help="bytes per weight (2: bf16)")
  p.add_argument("--json", default=None, help="also write the rows to this JSON file")
  p.set_defaults(main=main)


def main(args) -> int:
  common.check_args(args)
  for folder in args.target or []:
    if not os.path.isfile(os.path.join(folder, "config.json")):
      raise cli.UsageError(f"--target {folder} has no config.json")
  return common.finish(args, run_cost(args), True)
