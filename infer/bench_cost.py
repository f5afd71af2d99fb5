"""`python -m infer.bench cost`: predicted speedup of speculative decoding on accelerators.

The roofline model of infer/cost_model.py, for the benchmark model (fp32 on CPU here), a
Qwen2.5-VL-7B target and any `--target` folder (e.g. the shipped scenes target), each with its
ViSpec draft, in bf16 on an H100 and a TPU v5e chip, for the given trees (default a chain of 4
and the EAGLE-2 tree) at the given tau values (measured ones: `infer.bench spec` and the
trained drafts; the paper reports tau ~3 for ViSpec on 7B targets).
"""

from __future__ import annotations

import dataclasses
import json
import os
from vispec_jax import models

TREES = ("chain4", "dynamic-d3k8t30")  # default --trees (any vispec_jax.engine.tree.from_spec name)


def run_cost(args) -> list[dict]:
  from vispec_jax import draft
  from infer import cost_model
  from vispec_jax.engine import tree as tree_lib
  from vispec_jax.configs import TargetConfig
  from infer.bench import BENCH_INTERMEDIATE, BENCH_MODEL, BENCH_VOCAB
  from infer.memory import QWEN2_5_VL_7B

  qwen_7b = models.config_from_hf(QWEN2_5_VL_7B).text
  bench = dataclasses.replace(  # the text model of infer.bench's checkpoint (shapes only)
      qwen_7b, vocab_size=BENCH_VOCAB, hidden_size=BENCH_MODEL["hidden"],
      num_layers=BENCH_MODEL["layers"], num_heads=BENCH_MODEL["heads"],
      num_kv_heads=BENCH_MODEL["kv_heads"], head_dim=BENCH_MODEL["hidden"] // BENCH_MODEL["heads"],
      intermediate_size=BENCH_INTERMEDIATE)
  targets = {"bench-61M": bench, "qwen2.5-vl-7b": qwen_7b}
  for folder in args.target or []:  # e.g. the shipped scenes target
    with open(os.path.join(folder, "config.json")) as f:
      targets[os.path.basename(os.path.normpath(folder))] = models.config_from_hf(json.load(f)).text
  rows = []
  print(f"{'device':<18}{'target':<15}{'tree':<17}{'tau':>5}{'step ms':>9}{'verify':>8}"
        f"{'draft':>8}{'commit':>8}{'speedup':>9}")
  for dev_name in args.devices:
    device = cost_model.DEVICES[dev_name]
    for t_name, text in targets.items():
      tstack = cost_model.target_stack(text)
      dstack = cost_model.draft_stack(draft.DraftConfig.for_target(text, "vispec"))
      for tree_name in args.trees:
        tree = tree_lib.from_spec(tree_name)
        for tau in args.tau:
          r = cost_model.round_seconds(device, tstack, dstack, tree, tau, rows=args.batch,
                                       cache=args.cache, itemsize=args.itemsize)
          rows.append({"device": dev_name, "target": t_name, "tree": tree_name, "tau": tau,
                       **r})
          ms = {k: 1e3 * r[k] for k in ("step", "verify", "draft", "commit")}
          print(f"{dev_name:<18}{t_name:<15}{tree_name:<17}{tau:>5.1f}{ms['step']:>9.3f}"
                f"{ms['verify']:>8.3f}{ms['draft']:>8.3f}{ms['commit']:>8.3f}"
                f"{r['speedup']:>8.2f}x")
  return rows


def add_parser(sub):
  p = sub.add_parser("cost", help="predicted speedup on accelerators (roofline cost model)")
  p.add_argument("--devices", nargs="+", default=["h100", "tpu-v5e"], choices=["h100", "tpu-v5e"])
  p.add_argument("--trees", nargs="+", default=list(TREES),
                 help="dynamic, dynamic-dDkKtT or chainN (vispec_jax.engine.tree.from_spec)")
  p.add_argument("--target", nargs="+", default=None, metavar="DIR",
                 help="also these target folders (their config.json), e.g. models/scenes/target")
  p.add_argument("--tau", type=float, nargs="+", default=[1.0, 2.0, 3.0, 4.0])
  p.add_argument("--batch", type=int, default=1)
  p.add_argument("--cache", type=int, default=1024, help="KV cache slots in use per row")
  p.add_argument("--itemsize", type=int, default=2, help="bytes per weight (2: bf16)")
  p.add_argument("--json", default=None, help="also write the rows to this JSON file")
  return p
