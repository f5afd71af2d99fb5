"""`python -m infer.bench spec`: speculative vs vanilla greedy decoding, same process.

On the vanilla benchmark's random model (one 224x224 image per prompt), per batch size, tree and
bracketing draft (bench_common.bracket_drafts: oracle accepts the deepest path every round, the
upper bound; random accepts ~nothing, pure overhead): tau, tokens/s of both, the speedup and
efficiency = speedup / (tau + 1); outputs are checked token-identical to vanilla. With --mesh
the target loads straight into its sharded layout and the batch is split over `data`.
"""

from __future__ import annotations

import jax
import numpy as np

import vispec_jax as vj
from infer import bench_common as common
from vispec_jax import draft, sharding, testing

TREES = ("chain4", "chain6", "dynamic-d3k8t30", "dynamic-d4k4t16")  # vj.tree.from_spec names
HEADER = (f"{'batch':>5} {'tree':<16} {'drafter':<7} {'tau':>6} {'vanilla tok/s':>14} "
          f"{'spec tok/s':>11} {'speedup':>8} {'eff.':>6} identical")


def add_parser(sub):
  p = sub.add_parser("spec",
                     help="speculative vs vanilla greedy tokens/s (oracle and random drafts)")
  p.add_argument("--new-tokens", type=int, default=128)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--batch", type=int, nargs="+", default=[1, 4])
  p.add_argument("--trees", nargs="+", default=list(TREES), choices=list(TREES))
  p.add_argument("--drafters", nargs="+", default=["oracle", "random"],
                 choices=["oracle", "random"])
  p.add_argument("--folder", default="/tmp/vispec-bench-model",
                 help="checkpoint folder (the benchmark model is written there if absent)")
  p.add_argument("--mesh", default=None, metavar="SPEC",
                 help="shard target, draft and batch over a device mesh, e.g. 'data=2,tensor=4'")
  p.add_argument("--json", default=None, help="also write the rows to this JSON file")
  p.set_defaults(main=main)


def run_spec(args) -> list[dict]:
  mesh = sharding.make_mesh(args.mesh) if args.mesh else None
  if mesh is not None:
    jax.set_mesh(mesh)  # this process only: the KV caches made inside the programs follow RULES
  target = vj.load_target(common.write_bench_checkpoint(args.folder), mesh=mesh)
  target = common.without_eos(target)
  n = args.new_tokens
  dcfg = draft.DraftConfig.for_target(target.config.text)
  random_params = draft.init_params(dcfg, jax.random.PRNGKey(7))
  if mesh is not None:
    random_params = sharding.shard_params(random_params, mesh, dcfg.head_dim)
  rows = []
  for b in args.batch:
    images = [[testing.scene_image(224, 224, seed=i)] for i in range(b)]
    batch = vj.prepare(target, [common.BENCH_PROMPT] * b, images=images)
    if mesh is not None:
      batch = sharding.shard_batch(batch, mesh)
    vanilla = common.decoder(target, batch, n)
    reference = np.asarray(vanilla().tokens)
    drafts = common.bracket_drafts(target, reference, dcfg, random_params)
    for tree_name in args.trees:
      tree = vj.tree.from_spec(tree_name)
      for name in args.drafters:
        drafter, params = drafts[name]
        runs = common.alternate({"vanilla": vanilla, "spec": common.decoder(
            target, batch, n, drafter, params, tree)}, args.repeats)
        r = common.versus(runs["vanilla"].median, runs["spec"], reference, b * n)
        rows.append({
            "batch": b, "tree": tree_name, "drafter": name, "tau": round(r["tau"], 3),
            "vanilla_tok_s": round(r["vanilla_tok_s"], 1), "spec_tok_s": round(r["spec_tok_s"], 1),
            "speedup": round(r["speedup"], 3),
            "efficiency": round(r["speedup"] / (r["tau"] + 1), 3), "identical": r["identical"],
        })
        print(format_row(rows[-1]), flush=True)
  return rows


def format_row(r: dict) -> str:
  return (f"{r['batch']:>5} {r['tree']:<16} {r['drafter']:<7} {r['tau']:>6.2f} "
          f"{r['vanilla_tok_s']:>14.1f} {r['spec_tok_s']:>11.1f} {r['speedup']:>7.2f}x "
          f"{r['efficiency']:>6.2f} {r['identical']}")


def main(args) -> int:
  common.check_args(args)
  print(HEADER)
  rows = run_spec(args)
  return common.finish(args, rows, all(r["identical"] for r in rows))
