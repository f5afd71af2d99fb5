"""What the `infer.bench` subcommands share: the benchmark model, the option checks, decoding
closures, timing that lets machine noise hit every configuration alike, the oracle and random
drafts, and the output (rows as markdown, results as JSON, the exit status)."""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax._src import xla_bridge  # backends_are_initialized: jax has no public spelling of it

import vispec_jax as vj
from infer import cli
from proj.scenes import generator as scenes, target_folder
from vispec_jax import checkpoints, draft, models, testing

# The vanilla benchmark's model: big enough that matmuls, not Python overhead, dominate a step.
BENCH_MODEL = dict(hidden=512, layers=8, heads=8, kv_heads=4, vision_depth=4, vision_hidden=256)
BENCH_INTERMEDIATE = 1408
BENCH_VOCAB = 32000
BENCH_PROMPT = "Describe the image in detail. What colour is the square? How many circles are there?"


def bench_config(tok, vocab: int, intermediate: int, rope_theta: float = 1e4, **sizes) -> dict:
  """testing.tiny_qwen_config(tok, **sizes) with the text stack's vocabulary, MLP width and RoPE
  base set. Token ids above the tokenizer's few hundred are valid model outputs: the benchmarks
  compare ids, not text."""
  raw = testing.tiny_qwen_config(tok, **sizes)
  raw["text_config"].update(vocab_size=vocab, intermediate_size=intermediate)
  raw["text_config"]["rope_parameters"]["rope_theta"] = rope_theta
  return raw


def write_bench_checkpoint(folder: str, seed: int = 0) -> str:
  """Writes the benchmark's random Qwen2.5-VL checkpoint folder (torch-free) unless it is there;
  returns it. (testing.make_tiny_qwen cannot set the vocabulary and MLP sizes.)"""
  if os.path.isfile(os.path.join(folder, "model.safetensors")):
    return folder
  os.makedirs(folder, exist_ok=True)
  tok = testing.tiny_tokenizer()
  raw = bench_config(tok, BENCH_VOCAB, BENCH_INTERMEDIATE, **BENCH_MODEL)
  target = vj.init_target(models.config_from_hf(raw), jax.random.PRNGKey(seed))
  checkpoints.save_hf(target.params, target.family.name_map(target.config),
                      os.path.join(folder, "model.safetensors"))
  with open(os.path.join(folder, "config.json"), "w") as f:
    json.dump(raw, f, indent=1)
  testing.write_tokenizer_and_processor(tok, folder)
  return folder


# ------------------------------------------------------------------------------ options

INTS = {"new_tokens": 1, "repeats": 1, "iters": 1, "cache": 1, "itemsize": 1, "warmup": 0,
        "batch": 1, "scenes": 1, "batch_size": 1, "max_new_tokens": 1, "lengths": 1}
FLOATS = ("tau", "temperatures", "temperature", "budget_s")  # each >= 0


def add_style_option(p) -> None:
  """--style: the scenes to draw; by default the style the target folder records."""
  p.add_argument("--style", choices=sorted(scenes.STYLES), default=None,
                 help="scene style (default: the one the target was trained on, from its "
                      f"{target_folder.MANIFEST}; {scenes.DEFAULT_STYLE} without one)")


def style(args, folder: str) -> str:
  """args.style, or the style recorded in the target `folder`."""
  return args.style or target_folder.recorded_style(folder)


def listed(value) -> list:
  return [] if value is None else value if isinstance(value, list) else [value]


def flag(name: str) -> str:
  return "--" + name.replace("_", "-")


def check_args(args) -> None:
  """The options a subcommand has, checked before anything is loaded or measured; each error
  names the option (a cli.UsageError: one `error:` line, exit 2)."""
  for name, lo in INTS.items():
    for v in listed(getattr(args, name, None)):
      cli.check_int(flag(name), v, lo)
  for name in FLOATS:
    for v in listed(getattr(args, name, None)):
      cli.check_float(flag(name), v, 0.0)
  for name in ("trees", "tree"):
    for spec in listed(getattr(args, name, None)):
      cli.prefixed(flag(name), vj.tree.from_spec, spec)
  for folder in listed(getattr(args, "target", None)):
    cli.check_folder("--target", folder)
  if isinstance(getattr(args, "draft", None), str):  # one folder (table's NAME=DIR: parse_drafts)
    cli.check_folder("--draft", args.draft)
  folder = getattr(args, "folder", None)
  if folder and os.path.exists(folder) and not os.path.isdir(folder):
    raise cli.UsageError(f"--folder {folder} is a file, not a folder")
  if getattr(args, "mesh", None) is not None:
    cli.check_mesh("--mesh", args.mesh)
  if getattr(args, "json", None):
    cli.check_output("--json", args.json)
  if getattr(args, "threads", 0) not in (0, 1):
    raise cli.UsageError("--threads must be 0 (library defaults) or 1")
  if getattr(args, "threads", 0) == 1 and xla_bridge.backends_are_initialized():
    raise cli.UsageError("--threads 1 must be set before JAX starts its backend")


def finish(args, result, ok: bool) -> int:
  """Writes `result` to --json (if given); the exit status: 0, or 1 if a check failed."""
  if getattr(args, "json", None):
    with open(args.json, "w") as f:
      json.dump(result, f, indent=1)
  return 0 if ok else 1


# ------------------------------------------------------------------------------ measuring


def without_eos(target):
  """`target` that never stops early: every row generates exactly max_new_tokens."""
  return dataclasses.replace(target, config=dataclasses.replace(target.config, eos_token_ids=()))


def decoder(target, batch, max_new_tokens: int, drafter=None, params=None, tree=None, **options):
  """A no-argument closure: vanilla decoding of `batch` (no drafter) or speculative decoding
  with `drafter` and its `params`, ended by jax.block_until_ready so a timing covers it all."""
  if drafter is None:
    return lambda: jax.block_until_ready(vj.generate(target, batch, max_new_tokens, **options))
  return lambda: jax.block_until_ready(vj.speculative_generate(
      target, drafter, params, batch, tree=tree, max_new_tokens=max_new_tokens, **options))


def param_count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


def timed(fn) -> tuple[float, object]:
  t0 = time.perf_counter()
  out = fn()
  return time.perf_counter() - t0, out


@dataclasses.dataclass
class Timing:
  """One configuration's calls: the first (untimed: it compiles), the timed ones, the last output."""
  first_s: float
  out: object
  seconds: list[float] = dataclasses.field(default_factory=list)

  @property
  def median(self) -> float:
    return statistics.median(self.seconds)


def alternate(fns: dict[str, Callable], repeats: int, warmup: int = 0,
              rotate: bool = False) -> dict[str, Timing]:
  """Calls every fn once (it compiles) and `warmup` more times untimed, then `repeats` timed
  rounds that call each in turn, so machine noise hits all alike (`rotate`: every round starts
  one configuration later)."""
  runs = {name: Timing(*timed(fn)) for name, fn in fns.items()}
  for _ in range(warmup):
    for fn in fns.values():
      fn()
  names = list(fns)
  for r in range(repeats):
    start = r % len(names) if rotate else 0
    for name in names[start:] + names[:start]:
      seconds, runs[name].out = timed(fns[name])
      runs[name].seconds.append(seconds)
  return runs


def tau(out) -> float:
  """Accepted draft tokens per target forward, pooled over the rows."""
  forwards = int(np.asarray(out.stats.target_forwards).sum())
  return int(np.asarray(out.stats.accepted).sum()) / max(forwards, 1)


def bracket_drafts(target, reference: np.ndarray, dcfg, random_params) -> dict[str, tuple]:
  """{name: (drafter, params)} of the two drafts that bracket a trained one: oracle knows the
  target's greedy `reference` tokens (every round accepts the deepest path: the tree's speedup
  bound), random is an EAGLE draft with `random_params` (accepts ~nothing: pure overhead)."""
  padded = np.concatenate([reference, np.zeros((reference.shape[0], 16), np.int32)], 1)
  return {"oracle": (testing.OracleDrafter(target.config.text.vocab_size),
                     {"reference": jnp.asarray(padded)}),
          "random": (draft.EagleDrafter(dcfg), random_params)}


def versus(vanilla_s: float, spec: Timing, reference: np.ndarray, tokens: int) -> dict:
  """A speculative run against vanilla decoding that took `vanilla_s` for the same `tokens`."""
  return {"vanilla_tok_s": tokens / vanilla_s, "spec_tok_s": tokens / spec.median,
          "speedup": vanilla_s / spec.median, "tau": tau(spec.out),
          "identical": bool(np.array_equal(np.asarray(spec.out.tokens), reference))}


# ------------------------------------------------------------------------------ output


def markdown(columns, rows: list[dict], left=()) -> str:
  """A GitHub table of `rows` in `columns` [(heading, key, format)]; keys in `left` align left."""
  lines = [md_line(h for h, _, _ in columns),
           "|" + "|".join("---" if k in left else "---:" for _, k, _ in columns) + "|"]
  return "\n".join(lines + [md_line(cells(columns, r)) for r in rows])


def cells(columns, row: dict) -> list[str]:
  return [fmt.format(row[k]) for _, k, fmt in columns]


def md_line(values) -> str:
  return "| " + " | ".join(values) + " |"
