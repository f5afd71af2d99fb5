"""Benchmarks of vispec-jax against references, measured in one process.

    python -m infer.bench vanilla [--new-tokens 128] [--repeats 5] [--json out.json]
    python -m infer.bench spec [--batch 1 4] [--trees ...] [--mesh data=2,tensor=4]
    python -m infer.bench pieces [--batch 1]
    python -m infer.bench cost [--tau 1 2 3 4] [--target DIR] [--trees chain4 dynamic]
    python -m infer.bench table --target DIR --draft NAME=DIR [--draft NAME=DIR ...] [--scenes 8]
        [--temperatures 0 1] [--max-new-tokens 512] [--tree dynamic|chain4|...] [--markdown]
    python -m infer.bench length --target DIR --draft NAME=DIR ... [--lengths 64 128 256 512]
        [--scenes 4] --out length.png [--json out.json]
    python -m infer.bench facts --target DIR [--scenes 32] [--control] [--json out.json]
    python -m infer.bench batch [--target DIR] [--draft DIR] [--batch 1 4 16 32]
        [--new-tokens 128 512] [--tree chain6] [--repeats 3] [--json out.json] [--markdown]
    python -m infer.bench gpu --out DIR [--tiny] [--budget-s 420]

`vanilla`: tokens/s of `vj.generate` (greedy) against transformers' PyTorch
`Qwen2_5_VLForConditionalGeneration.generate` on the same random checkpoint folder (a
"tiny-but-not-toy" Qwen2.5-VL: text hidden 512, 8 layers, vocab 32k, one 224x224 image), same
prompt, same number of new tokens (EOS disabled on both sides). Both are warmed up, then timed
alternately; the table shows the median over repeats, and the token ids of both are compared.

`spec` (infer/bench_spec.py) times speculative against vanilla decoding with oracle and random
drafts; `pieces` (infer/bench_pieces.py) times the parts of a speculative round; `cost`
(infer/bench_cost.py) predicts speedups on accelerators from a roofline model. `table` and
`length` (infer/bench_table.py) measure trained drafts against vanilla decoding on held-out
scenes: tau, tokens/s and speedup per draft and temperature, and against the output length (PNG).
`facts` (infer/bench_facts.py) checks the facts of a scenes target's greedy answers against
their scenes (precision, recall; `--control`: every scene with another scene's image).
Timings move from run to run on shared machines: compare the ratio, not absolute numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time

import numpy as np

from infer import cli
from vispec_jax import models

# The vanilla benchmark's model: big enough that matmuls, not Python overhead, dominate a step.
BENCH_MODEL = dict(hidden=512, layers=8, heads=8, kv_heads=4, vision_depth=4, vision_hidden=256)
BENCH_INTERMEDIATE = 1408
BENCH_VOCAB = 32000
BENCH_PROMPT = "Describe the image in detail. What colour is the square? How many circles are there?"


def write_bench_checkpoint(folder: str, seed: int = 0) -> str:
  """Writes the benchmark's random Qwen2.5-VL checkpoint folder (torch-free); returns it."""
  import jax
  from vispec_jax import checkpoints, testing
  from vispec_jax.configs import TargetConfig
  from vispec_jax.target import init_target
  if os.path.isfile(os.path.join(folder, "model.safetensors")):
    return folder
  os.makedirs(folder, exist_ok=True)
  tok = testing.tiny_tokenizer()
  raw = testing.tiny_qwen_config(tok, **BENCH_MODEL)
  # Token ids above the tokenizer's few hundred are valid model outputs; we compare ids, not text.
  raw["text_config"]["vocab_size"] = BENCH_VOCAB
  raw["text_config"]["intermediate_size"] = BENCH_INTERMEDIATE
  target = init_target(models.config_from_hf(raw), jax.random.PRNGKey(seed))
  checkpoints.save_hf(target.params, target.family.name_map(target.config),
                      os.path.join(folder, "model.safetensors"))
  with open(os.path.join(folder, "config.json"), "w") as f:
    json.dump(raw, f, indent=1)
  testing.write_tokenizer_and_processor(tok, folder)
  return folder


def _timed(fn) -> tuple[float, object]:
  t0 = time.perf_counter()
  out = fn()
  return time.perf_counter() - t0, out


def _param_count(tree) -> int:
  import jax
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


def run_vanilla(args) -> dict:
  import jax
  try:
    import torch
  except ImportError:
    raise cli.UsageError("infer.bench vanilla compares against PyTorch: install it "
                         "(pip install -e '.[torch]')") from None
  from transformers import Qwen2_5_VLForConditionalGeneration

  import vispec_jax as vj
  from vispec_jax import testing

  load_before = list(os.getloadavg())  # shared machines: say how busy it was
  folder = write_bench_checkpoint(args.folder)
  target = vj.load_target(folder)
  # No early stop on either side: every run generates exactly `new_tokens` tokens.
  target = dataclasses.replace(target, config=dataclasses.replace(target.config, eos_token_ids=()))
  if args.threads:
    torch.set_num_threads(args.threads)
  hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()

  image = testing.scene_image(224, 224)
  batch = vj.prepare(target, [BENCH_PROMPT], images=[[image]])
  n = args.new_tokens
  length = int(batch.prompt_lengths[0])
  ids = batch.input_ids[0, -length:]
  item = batch.vision[0]
  hf_inputs = dict(
      input_ids=torch.tensor(ids[None]).long(),
      attention_mask=torch.ones(1, length, dtype=torch.long),
      pixel_values=torch.tensor(item.patches),
      image_grid_thw=torch.tensor([item.grid_thw]),
      mm_token_type_ids=torch.tensor((ids == target.config.image_token_id).astype(np.int64)[None]))

  def ours(max_new: int = n):
    out = vj.generate(target, batch, max_new_tokens=max_new)
    return np.asarray(jax.block_until_ready(out.tokens))[0].tolist()

  def theirs(max_new: int = n):
    with torch.inference_mode():
      g = hf.generate(**hf_inputs, max_new_tokens=max_new, min_new_tokens=max_new,
                      do_sample=False, eos_token_id=None, pad_token_id=target.config.pad_token_id)
    return g[0, length:].tolist()

  compile_s, ours_tokens = _timed(ours)  # first call compiles
  _, ref_tokens = _timed(theirs)
  for _ in range(args.warmup):
    ours(), theirs()
  times = {"ours": [], "transformers": []}
  for _ in range(args.repeats):  # alternate so that machine noise hits both alike
    times["ours"].append(_timed(ours)[0])
    times["transformers"].append(_timed(theirs)[0])
  breakdown = {}
  if args.breakdown:  # prefill (+ vision + first token) vs per-token step: T(n) = T(1) + (n-1)*step
    ours(1)
    theirs(1)
    one = {"ours": [], "transformers": []}
    for _ in range(args.repeats):
      one["ours"].append(_timed(lambda: ours(1))[0])
      one["transformers"].append(_timed(lambda: theirs(1))[0])
    for k in one:
      t1, tn = statistics.median(one[k]), statistics.median(times[k])
      breakdown[k] = {"first_token_ms": 1e3 * t1, "step_ms": 1e3 * (tn - t1) / max(n - 1, 1)}

  med = {k: statistics.median(v) for k, v in times.items()}
  tps = {k: n / v for k, v in med.items()}
  result = {
      "benchmark": "vanilla",
      "new_tokens": n, "repeats": args.repeats, "prompt_tokens": length,
      "image": list(image.size), "vision_tokens": int(item.num_tokens),
      "params": _param_count(target.params), "text_config": dataclasses.asdict(target.config.text),
      "cpu_count": os.cpu_count(), "jax": jax.__version__, "torch": torch.__version__,
      "threads": args.threads or "default", "torch_threads": torch.get_num_threads(),
      "backend": jax.default_backend(), "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "loadavg_before": load_before, "loadavg_after": list(os.getloadavg()),
      "compile_s": compile_s,
      "seconds": times, "median_s": med, "tokens_per_s": tps,
      "ratio": tps["ours"] / tps["transformers"],
      "identical_tokens": ours_tokens == ref_tokens,
      "first_mismatch": next((i for i, (a, b) in enumerate(zip(ours_tokens, ref_tokens)) if a != b),
                             None),
      "generated": {"ours": len(ours_tokens), "transformers": len(ref_tokens)},
      "breakdown": breakdown,
  }
  print(f"vanilla: {result['params'] / 1e6:.1f}M params, prompt {length} tokens "
        f"({item.num_tokens} vision, image {image.size[0]}x{image.size[1]}), {n} new tokens, "
        f"greedy, median of {args.repeats} ({jax.default_backend()}, {os.cpu_count()} cores, "
        f"threads: {args.threads or 'default'}, load average {load_before[0]:.1f})")
  print(f"{'':14s}{'tokens/s':>10s}{'median s':>10s}" + (
      f"{'1st tok ms':>12s}{'step ms':>9s}" if breakdown else ""))
  for k in ("ours", "transformers"):
    row = f"{k:14s}{tps[k]:10.1f}{med[k]:10.3f}"
    if breakdown:
      row += f"{breakdown[k]['first_token_ms']:12.1f}{breakdown[k]['step_ms']:9.2f}"
    print(row)
  print(f"ratio ours/transformers: {result['ratio']:.2f}x")
  print(f"identical token ids: {result['identical_tokens']}"
        + ("" if result["identical_tokens"] else f" (first mismatch at {result['first_mismatch']})"))
  return result


def validate(args) -> None:
  """The options of every subcommand (except table/length: bench_table.check_args), checked
  before anything is loaded or measured; each error names the option."""
  from vispec_jax.engine import tree as tree_lib
  for flag in ("new_tokens", "repeats", "iters", "cache", "itemsize"):
    if hasattr(args, flag):
      cli.check_int("--" + flag.replace("_", "-"), getattr(args, flag), 1)
  if hasattr(args, "warmup"):
    cli.check_int("--warmup", args.warmup, 0)
  if hasattr(args, "batch"):
    for b in args.batch if isinstance(args.batch, list) else [args.batch]:
      cli.check_int("--batch", b, 1)
  for tau in getattr(args, "tau", None) or []:
    cli.check_float("--tau", tau, 0.0)
  for name in getattr(args, "trees", None) or []:
    cli.prefixed("--trees", tree_lib.from_spec, name)
  for folder in getattr(args, "target", None) or []:
    cli.check_folder("--target", folder)
    if not os.path.isfile(os.path.join(folder, "config.json")):
      raise cli.UsageError(f"--target {folder} has no config.json")
  folder = getattr(args, "folder", None)
  if folder and os.path.exists(folder) and not os.path.isdir(folder):
    raise cli.UsageError(f"--folder {folder} is a file, not a folder")
  if getattr(args, "mesh", None) is not None:
    cli.check_mesh("--mesh", args.mesh)
  if getattr(args, "json", None):
    cli.check_output("--json", args.json)
  if getattr(args, "threads", 0) not in (0, 1):
    raise cli.UsageError("--threads must be 0 (library defaults) or 1")
  if getattr(args, "threads", 0) == 1 and "jax" in sys.modules:
    raise cli.UsageError("--threads 1 must be set before JAX is imported")


def main(argv=None) -> int:
  """Bad options and folders: one `error:` line, exit 2 (infer/cli.py)."""
  return cli.run(lambda: _main(argv))


def _main(argv) -> int:
  parser = cli.ArgumentParser(prog="python -m infer.bench", description=__doc__.split("\n")[0])
  sub = parser.add_subparsers(dest="command", required=True)
  v = sub.add_parser("vanilla", help="vj.generate vs transformers generate, tokens/s")
  v.add_argument("--new-tokens", type=int, default=128)
  v.add_argument("--repeats", type=int, default=5)
  v.add_argument("--warmup", type=int, default=1, help="untimed runs of each after the first")
  v.add_argument("--breakdown", action="store_true",
                 help="also time 1-token runs: first token (vision + prefill) vs per-token step")
  v.add_argument("--folder", default="/tmp/vispec-bench-qwen",
                 help="checkpoint folder (written with random weights if absent)")
  v.add_argument("--threads", type=int, default=0,
                 help="1: run both sides single-threaded (torch.set_num_threads(1) and XLA:CPU "
                      "without intra-op threads), a fairer comparison on a loaded machine; "
                      "0 (default): each library's own default")
  v.add_argument("--json", help="also write the results to this JSON file")
  from infer import bench_cost, bench_pieces, bench_spec, bench_table
  runners = {"spec": bench_spec.run_spec, "pieces": bench_pieces.run_pieces,
             "cost": bench_cost.run_cost}
  for module in (bench_spec, bench_pieces, bench_cost):
    module.add_parser(sub)
  bench_table.add_parsers(sub)
  from infer import bench_batch, bench_facts, bench_gpu
  own_checks = {"batch": bench_batch, "facts": bench_facts, "gpu": bench_gpu}  # check their args
  for module in own_checks.values():
    module.add_parser(sub)
  args = parser.parse_args(argv)
  if args.command in bench_table.COMMANDS:
    return bench_table.main(args)
  if args.command in own_checks:
    return own_checks[args.command].main(args)
  validate(args)
  if args.command in runners:
    if args.command == "spec":
      print(bench_spec.HEADER)
    rows = runners[args.command](args)
    if args.json:
      with open(args.json, "w") as f:
        json.dump(rows, f, indent=1)
    return 0 if all(r.get("identical", True) for r in rows) else 1
  if args.threads == 1:
    # Set here, for this process only (never globally): XLA reads it when JAX starts.
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
  result = {"vanilla": run_vanilla}[args.command](args)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=1)
  return 0 if result.get("identical_tokens", True) else 1


if __name__ == "__main__":
  sys.exit(main())
