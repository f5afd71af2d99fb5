"""`python -m infer.bench spec`: speculative vs vanilla greedy decoding, same process.

On the vanilla benchmark's random Qwen2.5-VL (text hidden 512, 8 layers, vocab 32k, one 224x224
image per prompt), for batch 1 and 4, static and dynamic trees, two drafters that bracket what a
trained draft can do:
  oracle  already knows the target's greedy answer: every round accepts the deepest path
          (the upper bound: the speedup of a perfect draft with this tree);
  random  an EAGLE drafter with random weights: accepts ~nothing (pure overhead).
With --mesh the target loads straight into its sharded layout and the batch is split over `data`.
Reported per case: tau (accepted draft tokens per target forward), tokens/s of both, the speedup
and efficiency = speedup / (tau + 1). Outputs are checked token-identical to vanilla.
"""

from __future__ import annotations

import dataclasses
import statistics
import time

import numpy as np

TREES = {
    "chain4": dict(paths=tuple((0,) * d for d in range(1, 5))),
    "chain6": dict(paths=tuple((0,) * d for d in range(1, 7))),
    "dynamic-d3k8t30": dict(depth=3, top_k=8, total_tokens=30),
    "dynamic-d4k4t16": dict(depth=4, top_k=4, total_tokens=16),
}


def run_spec(args) -> list[dict]:
  import jax
  import jax.numpy as jnp

  import vispec_jax as vj
  from vispec_jax import draft, sharding, testing
  from infer.bench import BENCH_PROMPT, write_bench_checkpoint

  mesh = sharding.make_mesh(args.mesh) if args.mesh else None
  if mesh is not None:
    jax.set_mesh(mesh)  # this process only: the KV caches made inside the programs follow RULES
  target = vj.load_target(write_bench_checkpoint(args.folder), mesh=mesh)
  target = dataclasses.replace(target, config=dataclasses.replace(target.config, eos_token_ids=()))
  n = args.new_tokens
  dcfg = draft.DraftConfig.for_target(target.config.text)
  random_params = draft.init_params(dcfg, jax.random.PRNGKey(7))
  if mesh is not None:
    random_params = sharding.shard_params(random_params, mesh, dcfg.head_dim)
  rows = []
  for b in args.batch:
    prompts = [BENCH_PROMPT] * b
    images = [[testing.scene_image(224, 224, seed=i)] for i in range(b)]
    batch = vj.prepare(target, prompts, images=images)
    if mesh is not None:
      batch = sharding.shard_batch(batch, mesh)

    def vanilla():
      return np.asarray(jax.block_until_ready(vj.generate(target, batch, n).tokens))

    reference = vanilla()
    padded = jnp.asarray(np.concatenate([reference, np.zeros((b, 16), np.int32)], 1))
    drafters = {
        "oracle": (testing.OracleDrafter(target.config.text.vocab_size), {"reference": padded}),
        "random": (draft.EagleDrafter(dcfg), random_params),
    }
    for tree_name in args.trees:
      tree = vj.TreeConfig(**TREES[tree_name])
      for name in args.drafters:
        drafter, params = drafters[name]

        def spec():
          out = vj.speculative_generate(target, drafter, params, batch, tree=tree, max_new_tokens=n)
          return jax.block_until_ready(out)

        out = spec()  # compile
        identical = bool(np.array_equal(np.asarray(out.tokens), reference))
        times = {"vanilla": [], "spec": []}
        for _ in range(args.repeats):  # alternate: machine noise hits both alike
          t0 = time.perf_counter(); vanilla(); times["vanilla"].append(time.perf_counter() - t0)
          t0 = time.perf_counter(); out = spec(); times["spec"].append(time.perf_counter() - t0)
        tv, ts = statistics.median(times["vanilla"]), statistics.median(times["spec"])
        tau = float(np.asarray(out.stats.accepted).sum() / np.asarray(out.stats.target_forwards).sum())
        speedup = tv / ts
        rows.append({
            "batch": b, "tree": tree_name, "drafter": name, "tau": round(tau, 3),
            "vanilla_tok_s": round(b * n / tv, 1), "spec_tok_s": round(b * n / ts, 1),
            "speedup": round(speedup, 3), "efficiency": round(speedup / (tau + 1), 3),
            "identical": identical,
        })
        print(_row(rows[-1]), flush=True)
  return rows


HEADER = (f"{'batch':>5} {'tree':<16} {'drafter':<7} {'tau':>6} {'vanilla tok/s':>14} "
          f"{'spec tok/s':>11} {'speedup':>8} {'eff.':>6} identical")


def _row(r: dict) -> str:
  return (f"{r['batch']:>5} {r['tree']:<16} {r['drafter']:<7} {r['tau']:>6.2f} "
          f"{r['vanilla_tok_s']:>14.1f} {r['spec_tok_s']:>11.1f} {r['speedup']:>7.2f}x "
          f"{r['efficiency']:>6.2f} {r['identical']}")


def add_parser(sub):
  p = sub.add_parser("spec", help="speculative vs vanilla greedy tokens/s (oracle and random drafts)")
  p.add_argument("--new-tokens", type=int, default=128)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--batch", type=int, nargs="+", default=[1, 4])
  p.add_argument("--trees", nargs="+", default=list(TREES), choices=list(TREES))
  p.add_argument("--drafters", nargs="+", default=["oracle", "random"], choices=["oracle", "random"])
  p.add_argument("--folder", default="/tmp/vispec-bench-model",
                 help="checkpoint folder (the benchmark model is written there if absent)")
  p.add_argument("--mesh", default=None, metavar="SPEC",
                 help="shard target, draft and batch over a device mesh, e.g. 'data=2,tensor=4'")
  p.add_argument("--json", default=None, help="also write the rows to this JSON file")
  return p
