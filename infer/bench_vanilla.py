"""`python -m infer.bench vanilla`: tokens/s of `vj.generate` against transformers' generate.

Greedy decoding on both sides of the same random checkpoint (bench_common.write_bench_checkpoint),
prompt and number of new tokens (EOS disabled), warmed up, timed alternately (median); the token
ids of both are compared.
"""

from __future__ import annotations

import dataclasses
import os
import statistics

import jax
import numpy as np

import vispec_jax as vj
from infer import bench_common as common, cli
from vispec_jax import testing


def add_parser(sub):
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
  v.set_defaults(main=main)


def run_vanilla(args) -> dict:
  try:
    import torch
  except ImportError:
    raise cli.UsageError("infer.bench vanilla compares against PyTorch: install it "
                         "(pip install -e '.[torch]')") from None
  from transformers import Qwen2_5_VLForConditionalGeneration

  load_before = list(os.getloadavg())  # shared machines: say how busy it was
  folder = common.write_bench_checkpoint(args.folder)
  target = common.without_eos(vj.load_target(folder))  # every run: exactly `new_tokens` tokens
  if args.threads:
    torch.set_num_threads(args.threads)
  hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()

  image = testing.scene_image(224, 224)
  batch = vj.prepare(target, [common.BENCH_PROMPT], images=[[image]])
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

  def fns(max_new: int) -> dict:
    ours = common.decoder(target, batch, max_new)

    def theirs():
      with torch.inference_mode():
        g = hf.generate(**hf_inputs, max_new_tokens=max_new, min_new_tokens=max_new,
                        do_sample=False, eos_token_id=None, pad_token_id=target.config.pad_token_id)
      return g[0, length:].tolist()
    return {"ours": lambda: np.asarray(ours().tokens)[0].tolist(), "transformers": theirs}

  runs = common.alternate(fns(n), args.repeats, warmup=args.warmup)
  times = {k: r.seconds for k, r in runs.items()}
  ours_tokens, ref_tokens = runs["ours"].out, runs["transformers"].out
  breakdown = {}
  if args.breakdown:  # prefill (+ vision + first token) vs per-token step: T(n) = T(1) + (n-1)*step
    for k, one in common.alternate(fns(1), args.repeats).items():
      t1, tn = one.median, statistics.median(times[k])
      breakdown[k] = {"first_token_ms": 1e3 * t1, "step_ms": 1e3 * (tn - t1) / max(n - 1, 1)}

  med = {k: r.median for k, r in runs.items()}
  tps = {k: n / v for k, v in med.items()}
  result = {
      "benchmark": "vanilla",
      "new_tokens": n, "repeats": args.repeats, "prompt_tokens": length,
      "image": list(image.size), "vision_tokens": int(item.num_tokens),
      "params": common.param_count(target.params),
      "text_config": dataclasses.asdict(target.config.text),
      "cpu_count": os.cpu_count(), "jax": jax.__version__, "torch": torch.__version__,
      "threads": args.threads or "default", "torch_threads": torch.get_num_threads(),
      "backend": jax.default_backend(), "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "loadavg_before": load_before, "loadavg_after": list(os.getloadavg()),
      "compile_s": runs["ours"].first_s,
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
  where = "" if result["identical_tokens"] else f" (first mismatch at {result['first_mismatch']})"
  print(f"identical token ids: {result['identical_tokens']}{where}")
  return result


def main(args) -> int:
  common.check_args(args)
  if args.threads == 1:
    # Set here, for this process only (never globally): XLA reads it when its backend starts.
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
  result = run_vanilla(args)
  return common.finish(args, result, result["identical_tokens"])
