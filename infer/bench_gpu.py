"""`python -m infer.bench gpu`: one accelerator run, vanilla vs speculative in bf16, within a budget.

    python -m infer.bench gpu --out DIR [--tiny] [--budget-s 420] [--new-tokens 128] [--repeats 3]

Two random-weight text stacks, bf16 params and activations, text-only prompts (no image):
  bench-61M      the shapes of `infer.bench vanilla`'s model (bench_common.BENCH_MODEL: hidden 512,
                 8 layers, vocab 32k);
  qwen2.5-vl-7b  the text stack of Qwen2.5-VL-7B (hidden 3584, 28 layers, 28 heads, 4 KV heads,
                 MLP 18944, vocab 152064; its vision tower is replaced by a tiny one: unused).
Weights are drawn on the device (one jitted jax.random program per leaf shape), so nothing is
read from disk. For batch 1, 8 and 32, trees chain4, chain6 and dynamic, and the oracle and
random drafts of `infer.bench spec` (oracle: knows the greedy answer, the speedup bound of the
tree; random: an EAGLE draft with random weights, pure overhead), EOS disabled so every row
generates exactly --new-tokens. Per (model, batch) vanilla is compiled and timed once (median of
--repeats); per row the speculative loop is compiled, then timed (median of --repeats), each call
ended by `jax.block_until_ready`, its output checked token-identical to vanilla.

Rows run most important first (chain4 and dynamic with the oracle draft and chain4 with the
random one, on both models and every batch; then the rest), and no row starts once --budget-s
seconds have passed since the start; results.json and results.md in --out are rewritten after
every row, so a run cut short still leaves its results. Imports neither grain, TFDS nor
ml_collections. --tiny runs the same code at tiny sizes (CPU, seconds: the test of this command).
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import vispec_jax as vj
from infer import bench_common as common, cli
from infer.memory import QWEN2_5_VL_7B
from vispec_jax import draft, models, testing

BATCHES = (1, 8, 32)
TREES = ("chain4", "dynamic", "chain6")
# Most important first: the best-case trees with the oracle draft and the overhead of a
# useless draft; then the rest.
TIERS = ((("chain4", "oracle"), ("dynamic", "oracle"), ("chain4", "random")),
         (("dynamic", "random"), ("chain6", "oracle"), ("chain6", "random")))
# --tiny: a few rows that still cover both models, batch 1 and > 1, both tree kinds, both drafts.
TINY_PLAN = (("qwen2.5-vl-7b", 2, "chain4", "oracle"), ("qwen2.5-vl-7b", 2, "dynamic", "random"),
             ("bench-61M", 1, "chain4", "random"))


def add_parser(sub):
  p = sub.add_parser("gpu", help="accelerator benchmark: vanilla vs speculative, bf16, the "
                                 "benchmark model and a Qwen2.5-VL-7B-shaped text stack")
  p.add_argument("--out", required=True, metavar="DIR",
                 help="folder for results.json and results.md (made if absent)")
  p.add_argument("--tiny", action="store_true",
                 help="the same code at tiny sizes (CPU, seconds): a smoke test")
  p.add_argument("--budget-s", type=float, default=420.0,
                 help="start no new row after this many seconds")
  p.add_argument("--new-tokens", type=int, default=None,
                 help="tokens per row (default 128; 12 with --tiny)")
  p.add_argument("--repeats", type=int, default=None,
                 help="timed runs of each (median; default 3, 1 with --tiny)")
  p.set_defaults(main=main)


def model_configs(tiny: bool) -> dict[str, dict]:
  """{name: config.json dict} of the two text stacks (tiny tokenizer ids, tiny vision tower)."""
  q = QWEN2_5_VL_7B
  shapes = {  # (hidden, layers, heads, kv_heads), vocab, MLP, RoPE base
      "bench-61M": ([common.BENCH_MODEL[k] for k in ("hidden", "layers", "heads", "kv_heads")],
                    common.BENCH_VOCAB, common.BENCH_INTERMEDIATE, 1e4),
      "qwen2.5-vl-7b": ([q["hidden_size"], q["num_hidden_layers"], q["num_attention_heads"],
                         q["num_key_value_heads"]], q["vocab_size"], q["intermediate_size"], 1e6)}
  if tiny:
    shapes = {"bench-61M": ([64, 2, 4, 2], 512, 128, 1e4),
              "qwen2.5-vl-7b": ([64, 2, 4, 1], 1024, 160, 1e6)}
  tok = testing.tiny_tokenizer()
  return {name: common.bench_config(tok, vocab, mlp, theta, **dict(zip(
              ("hidden", "layers", "heads", "kv_heads"), sizes)), vision_depth=1, vision_hidden=32)
          for name, (sizes, vocab, mlp, theta) in shapes.items()}


@functools.lru_cache(maxsize=None)
def _leaf_fn(shape: tuple, dtype, kind: str):
  if kind == "scale":
    return jax.jit(lambda key: jnp.ones(shape, dtype))
  if kind == "bias":
    return jax.jit(lambda key: jnp.zeros(shape, dtype))
  return jax.jit(lambda key: (0.02 * jax.random.normal(key, shape, jnp.float32)).astype(dtype))


def device_init(shapes, key):
  """Random params for a tree of ShapeDtypeStruct, drawn on the default device (the
  distribution of vispec_jax.layers.init_params: norm scales 1, biases 0, the rest N(0, 0.02)),
  one jitted program per (shape, dtype): a 7B model in seconds, never on the host."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(shapes)
  out = []
  for i, (path, s) in enumerate(leaves):
    name = getattr(path[-1], "key", None)
    kind = name if name in ("scale", "bias") else "normal"
    out.append(_leaf_fn(tuple(s.shape), s.dtype, kind)(jax.random.fold_in(key, i)))
  return jax.tree_util.tree_unflatten(treedef, out)


def make_model(raw: dict, seed: int = 0):
  """(Target with random bf16 params and EOS disabled, random EAGLE draft config and params)."""
  cfg = models.config_from_hf(raw)
  fam = models.family(cfg)
  key = jax.random.PRNGKey(seed)
  params = device_init(fam.param_shapes(cfg, jnp.bfloat16), key)
  target = common.without_eos(vj.Target(cfg, params, testing.tiny_tokenizer(),
                                        fam.make_image_processor(None, cfg)))
  dcfg = draft.DraftConfig.for_target(cfg.text)
  dparams = device_init(draft.param_shapes(dcfg, jnp.bfloat16), jax.random.fold_in(key, 1))
  return target, dcfg, jax.block_until_ready(dparams)


COLUMNS = [("model", "model", "{}"), ("batch", "batch", "{}"), ("tree", "tree", "{}"),
           ("draft", "draft", "{}"), ("tokens/s vanilla", "vanilla_tok_s", "{:.1f}"),
           ("tokens/s spec", "spec_tok_s", "{:.1f}"), ("speedup", "speedup", "{:.2f}x"),
           ("tau", "tau", "{:.2f}"), ("identical", "identical", "{}")]


def markdown(result: dict) -> str:
  s = result["setup"]
  return (f"{s['device_kind']} ({s['backend']}), jax {s['jax']}, bf16, {s['new_tokens']} new "
          f"tokens per row, median of {s['repeats']}, {len(result['rows'])} rows in "
          f"{result['elapsed_s']:.0f} s" + (" (stopped: budget spent)" if result["stopped"] else "")
          + "\n\n" + common.markdown(COLUMNS, result["rows"], left=("model", "tree", "draft"))
          + "\n")


def write(out_dir: str, result: dict) -> None:
  """results.json and results.md, each written whole then renamed (a kill leaves the last)."""
  for name, text in (("results.json", json.dumps(result, indent=1)),
                     ("results.md", markdown(result))):
    tmp = os.path.join(out_dir, name + ".tmp")
    with open(tmp, "w") as f:
      f.write(text)
    os.replace(tmp, os.path.join(out_dir, name))


def plan(tiny: bool) -> list[tuple[str, int, str, str]]:
  """(model, batch, tree, draft) rows, most important first."""
  if tiny:
    return list(TINY_PLAN)
  return [(m, b, t, d) for tier in TIERS for m in ("qwen2.5-vl-7b", "bench-61M")
          for b in BATCHES for t, d in tier]


def run_gpu(args) -> dict:
  start = time.perf_counter()
  n, repeats = args.new_tokens, args.repeats
  os.makedirs(args.out, exist_ok=True)
  if not os.access(args.out, os.W_OK):
    raise cli.UsageError(f"--out {args.out} is not writable")
  dev = jax.devices()[0]
  result = {"benchmark": "gpu", "setup": {
      "device_kind": dev.device_kind, "backend": jax.default_backend(),
      "devices": len(jax.devices()), "jax": jax.__version__, "python": sys.version.split()[0],
      "tiny": args.tiny, "new_tokens": n, "repeats": repeats, "budget_s": args.budget_s,
      "dtype": "bfloat16", "prompt": common.BENCH_PROMPT, "eos": "disabled"},
      "rows": [], "stopped": False, "elapsed_s": 0.0}
  print(f"gpu: {dev.device_kind} ({jax.default_backend()}), jax {jax.__version__}, budget "
        f"{args.budget_s:g} s, {n} new tokens, median of {repeats}", flush=True)
  raws = model_configs(args.tiny)
  loaded, vanilla, drafts = {}, {}, {}
  for m, b, tree_name, draft_name in plan(args.tiny):
    elapsed = time.perf_counter() - start
    if elapsed > args.budget_s:
      result["stopped"] = True
      print(f"budget spent ({elapsed:.0f} s): not starting {m} batch {b} {tree_name} "
            f"{draft_name} and later rows", flush=True)
      break
    if m not in loaded:
      t0 = time.perf_counter()
      loaded[m] = make_model(raws[m])  # both stay on the device (7B bf16: ~16 GB)
      params = common.param_count(loaded[m][0].params["text"])
      result["setup"].setdefault("text_params", {})[m] = params
      print(f"{m}: {params / 1e6:.1f}M text params (bf16) drawn in "
            f"{time.perf_counter() - t0:.1f} s", flush=True)
    target, dcfg, dparams = loaded[m]
    if (m, b) not in vanilla:
      batch = vj.prepare(target, [common.BENCH_PROMPT] * b)
      result["setup"]["prompt_tokens"] = int(batch.prompt_lengths[0])
      v = common.alternate({"vanilla": common.decoder(target, batch, n)}, repeats)["vanilla"]
      reference = np.asarray(v.out.tokens)
      vanilla[m, b] = batch, reference, v
      drafts[m, b] = common.bracket_drafts(target, reference, dcfg, dparams)
    batch, reference, v = vanilla[m, b]
    drafter, dp = drafts[m, b][draft_name]
    spec = common.alternate({"spec": common.decoder(
        target, batch, n, drafter, dp, vj.tree.from_spec(tree_name))}, repeats)["spec"]
    row = {"model": m, "batch": b, "tree": tree_name, "draft": draft_name,
           **common.versus(v.median, spec, reference, b * n), "vanilla_s": v.median,
           "spec_s": spec.median, "vanilla_compile_s": v.first_s, "spec_compile_s": spec.first_s}
    result["rows"].append(row)
    result["elapsed_s"] = time.perf_counter() - start
    write(args.out, result)
    print(f"[{result['elapsed_s']:6.0f} s] {m} batch {b} {tree_name} {draft_name}: vanilla "
          f"{row['vanilla_tok_s']:.1f} tok/s, spec {row['spec_tok_s']:.1f} tok/s, speedup "
          f"{row['speedup']:.2f}x, tau {row['tau']:.2f}, identical {row['identical']} (compile "
          f"{spec.first_s:.1f} s)", flush=True)
  result["elapsed_s"] = time.perf_counter() - start
  write(args.out, result)
  print(f"wrote {os.path.join(os.path.abspath(args.out), 'results.json')} and results.md "
        f"({len(result['rows'])} rows, {result['elapsed_s']:.0f} s)", flush=True)
  return result


def main(args) -> int:
  """Runs `gpu` (parsed by infer/bench.py, whose errors are one line, exit 2)."""
  if os.path.exists(args.out) and not os.path.isdir(args.out):
    raise cli.UsageError(f"--out {args.out} is a file, not a folder")
  if args.new_tokens is None:
    args.new_tokens = 12 if args.tiny else 128
  if args.repeats is None:
    args.repeats = 1 if args.tiny else 3
  common.check_args(args)
  result = run_gpu(args)
  return 0 if all(r["identical"] for r in result["rows"]) else 1
