"""`python -m infer.bench batch`: vanilla vs speculative greedy tokens/s against the batch size.

    python -m infer.bench batch [--target DIR] [--draft DIR] [--batch 1 4 16 32]
        [--new-tokens 128 512] [--tree chain6] [--repeats 3] [--split test] [--json out.json]
        [--markdown]

For every (batch B, new tokens N): the held-out scenes SPLIT_SEEDS[split] + i, i < B, one scene
per row (image + question, prompted as infer/bench_table.py does), decoded greedily with EOS
honoured by `vj.generate` and by `vj.speculative_generate` with the draft and --tree. The images
are encoded once outside the timings. Both programs are compiled (one untimed call each), then
--repeats timed runs alternate vanilla and speculative, each ended by `jax.block_until_ready`;
the median is reported. tokens/s = tokens actually generated (sum of the rows' lengths) / time;
speedup = speculative tokens/s / vanilla tokens/s; tau = accepted draft tokens / target forwards,
pooled over rows. Every speculative output must be token-identical to vanilla (exit status 1
otherwise).
"""

from __future__ import annotations

import os

import jax
import numpy as np

import vispec_jax as vj
from infer import bench_common as common, bench_table
from proj.scenes import generator as scenes_lib

DEFAULT_TARGET = "models/scenes/target"
DEFAULT_DRAFT = "models/scenes/vispec"


def add_parser(sub):
  p = sub.add_parser("batch", help="vanilla vs speculative tokens/s against the batch size "
                                   "(held-out scenes, greedy)")
  p.add_argument("--target", default=DEFAULT_TARGET, help="target folder")
  p.add_argument("--draft", default=DEFAULT_DRAFT, help="draft folder (ViSpec, EAGLE or Medusa)")
  p.add_argument("--batch", type=int, nargs="+", default=[1, 4, 16, 32])
  p.add_argument("--new-tokens", type=int, nargs="+", default=[128, 512])
  p.add_argument("--tree", default="chain6", help="dynamic, dynamic-dDkKtT or chainN")
  p.add_argument("--repeats", type=int, default=3, help="timed runs of each (median)")
  p.add_argument("--split", choices=["validation", "test"], default="test",
                 help="held-out seed range of the scenes (proj/scenes/generator.py SPLIT_SEEDS)")
  p.add_argument("--json", default=None, metavar="PATH", help="also write the results here")
  p.add_argument("--markdown", action="store_true", help="print the table as GitHub markdown")
  p.set_defaults(main=main)


def measure(target, d, batch, embeds, tree, n: int, repeats: int) -> dict:
  """One (batch, new tokens) configuration: warm-up, alternating timed runs, the row."""
  runs = common.alternate({
      "vanilla": common.decoder(target, batch, n, embeds=embeds),
      "spec": common.decoder(target, batch, n, d.drafter, d.params, tree, embeds=embeds)}, repeats)
  ref, out = runs["vanilla"].out, runs["spec"].out
  tv, ts = runs["vanilla"].median, runs["spec"].median
  tokens_v, tokens_s = int(np.asarray(ref.lengths).sum()), int(np.asarray(out.lengths).sum())
  return {
      "batch": int(batch.input_ids.shape[0]), "new_tokens": n,
      "tokens_vanilla": tokens_v, "tokens_spec": tokens_s,
      "vanilla_tok_s": tokens_v / tv, "spec_tok_s": tokens_s / ts,
      "speedup": (tokens_s / ts) / (tokens_v / tv), "tau": common.tau(out),
      "identical": vj.trim(out) == vj.trim(ref),
      "seconds": {k: r.seconds for k, r in runs.items()},
  }


COLUMNS = [("batch", "batch", "{}"), ("new tokens", "new_tokens", "{}"),
           ("tokens", "tokens_vanilla", "{}"), ("vanilla tokens/s", "vanilla_tok_s", "{:.1f}"),
           ("speculative tokens/s", "spec_tok_s", "{:.1f}"), ("speedup", "speedup", "{:.2f}x"),
           ("tau", "tau", "{:.2f}"), ("identical", "identical", "{}")]


def format_row(r: dict, markdown: bool) -> str:
  cells = common.cells(COLUMNS, r)
  if markdown:
    return common.md_line(cells)
  return "  ".join(c.rjust(len(h)) for c, (h, _, _) in zip(cells, COLUMNS))


def run_batch(args) -> dict:
  tree = vj.tree.from_spec(args.tree)
  target, drafts = bench_table.load_models(args.target, {"draft": args.draft}, tree, args.tree)
  d = drafts["draft"]
  base = scenes_lib.SPLIT_SEEDS[args.split]
  examples = [scenes_lib.sample(base + i) for i in range(max(args.batch))]
  print(f"batch: {os.path.abspath(args.target)} + {d.config.kind} draft "
        f"{os.path.abspath(args.draft)}, tree {args.tree}, greedy, EOS honoured, held-out "
        f"scenes ({args.split}, seeds from {base}), median of {args.repeats} "
        f"({jax.default_backend()}, {os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.1f})", flush=True)
  print(common.markdown(COLUMNS, []) if args.markdown else "  ".join(h for h, _, _ in COLUMNS),
        flush=True)
  rows = []
  for b in args.batch:
    rows_examples = examples[:b]
    batch = vj.prepare(target, [e["question"] for e in rows_examples],
                       images=[[e["image"]] for e in rows_examples])
    embeds = target.embed(target.params, batch)
    for n in args.new_tokens:
      rows.append(measure(target, d, batch, embeds, tree, n, args.repeats))
      print(format_row(rows[-1], args.markdown), flush=True)
  return {"benchmark": "batch", "target": os.path.abspath(args.target),
          "draft": os.path.abspath(args.draft), "draft_kind": d.config.kind, "tree": args.tree,
          "split": args.split, "repeats": args.repeats, "backend": jax.default_backend(),
          "jax": jax.__version__, "cpu_count": os.cpu_count(), "rows": rows}


def main(args) -> int:
  """Runs `batch` (parsed by infer/bench.py, whose errors are one line, exit 2)."""
  common.check_args(args)
  result = run_batch(args)
  return common.finish(args, result, all(r["identical"] for r in result["rows"]))
