"""`python -m infer.bench table|length`: trained drafts against vanilla decoding on held-out scenes.

`table`: per temperature, vanilla `vj.generate` and every draft (`vj.load_draft`) with
`vj.speculative_generate` on one tree; `length`: speedup and tau against the maximum output
length (a PNG). Scenes `proj.scenes.generator.sample(SPLIT_SEEDS[split] + i)`, prompted as
infer/demo.py does, at batch 1; how they are timed and what each column means:
docs/benchmarks.md section 4. At T = 0 every output must be token-identical to vanilla (exit
status 1 otherwise); at T > 0 scene i samples with fold_in(PRNGKey(0), i) everywhere.
"""

from __future__ import annotations

import dataclasses
import math
import os

import jax
import numpy as np
from PIL import Image, ImageDraw, ImageFont

import vispec_jax as vj
from infer import bench_common as common, cli
from proj.scenes import generator as scenes_lib
from proj.scenes.generator import SPLIT_SEEDS

LINE_COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189),
                (140, 86, 75), (227, 119, 194), (23, 190, 207)]


# ------------------------------------------------------------------------------ arguments


def parse_drafts(specs) -> dict[str, str]:
  """['NAME=DIR', ...] -> {NAME: DIR}, checked (names unique, folders exist)."""
  if not specs:
    raise ValueError("give at least one --draft NAME=DIR")
  drafts = {}
  for spec in specs:
    name, sep, folder = spec.partition("=")
    name = name.strip()
    if not sep or not name or not folder:
      raise ValueError(f"--draft must be NAME=DIR, got {spec!r}")
    if name == "vanilla" or name in drafts:
      raise ValueError(f"--draft name {name!r} is " +
                       ("reserved" if name == "vanilla" else "given twice"))
    if not os.path.isdir(folder):
      raise FileNotFoundError(f"--draft {name} folder not found: {folder}")
    drafts[name] = folder
  return drafts


def add_parser(sub):
  def shared(p, scenes: int):
    p.add_argument("--target", required=True, help="target folder")
    p.add_argument("--draft", action="append", metavar="NAME=DIR",
                   help="a draft folder and its row name (repeat for several)")
    p.add_argument("--scenes", type=int, default=scenes, help="held-out scenes (batch 1 each)")
    p.add_argument("--split", choices=list(SPLIT_SEEDS), default="test",
                   help="seed range of the scenes (proj/scenes/generator.py SPLIT_SEEDS)")
    common.add_style_option(p)
    p.add_argument("--tree", default="dynamic",
                   help="dynamic (default: depth 3, top_k 8, 30 tokens), dynamic-dDkKtT or chainN")
    p.add_argument("--repeats", type=int, default=1, help="timed runs of everything (median)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results here")
    p.set_defaults(main=main)

  t = sub.add_parser("table", help="paper-style table: tau, tokens/s, speedup per draft and "
                                   "temperature on held-out scenes")
  shared(t, 8)
  t.add_argument("--temperatures", type=float, nargs="+", default=[0.0, 1.0])
  t.add_argument("--max-new-tokens", type=int, default=512)
  t.add_argument("--markdown", action="store_true", help="print the table as GitHub markdown")

  g = sub.add_parser("length", help="speedup and tau vs maximum output length (PNG plot)")
  shared(g, 4)
  g.add_argument("--lengths", type=int, nargs="+", default=[64, 128, 256, 512])
  g.add_argument("--temperature", type=float, default=0.0)
  g.add_argument("--ignore-eos", action="store_true",
                 help="never stop at EOS: every answer is exactly the length")
  g.add_argument("--out", default="length.png", help="the PNG plot")


# ------------------------------------------------------------------------------ measuring


@dataclasses.dataclass
class Scene:
  seed: int
  kind: str
  batch: object
  embeds: object


def load_models(folder: str, drafts: dict[str, str], tree, tree_spec: str,
                ignore_eos: bool = False):
  """The target and {name: Draft}; a Medusa draft must be deep enough for the tree."""
  target = vj.load_target(folder)
  if ignore_eos:
    target = common.without_eos(target)
  loaded = {}
  for name, draft_folder in drafts.items():
    d = vj.load_draft(draft_folder, target)
    if d.config.kind == "medusa" and tree.max_depth > d.config.medusa_heads:
      raise ValueError(
          f"--draft {name} has {d.config.medusa_heads} Medusa heads, so it drafts at most "
          f"{d.config.medusa_heads} tokens deep; --tree {tree_spec} is {tree.max_depth} deep "
          f"(a dynamic tree is depth + 1 deep): use chain{d.config.medusa_heads} or shallower, "
          f"or dynamic-dDkKtT with D <= {d.config.medusa_heads - 1}")
    loaded[name] = d
  return target, loaded


def load(args, drafts: dict[str, str], tree):
  """Target, {name: Draft} and the prepared scenes."""
  target, loaded = load_models(args.target, drafts, tree, args.tree,
                               getattr(args, "ignore_eos", False))
  base = SPLIT_SEEDS[args.split]
  scenes = []
  for i in range(args.scenes):
    example = scenes_lib.sample(base + i, style=args.style)
    batch = vj.prepare(target, [example["question"]], images=[[example["image"]]])
    embeds = target.embed(target.params, batch)
    scenes.append(Scene(base + i, example["kind"], batch, embeds))
  return target, loaded, scenes


def measure(target, drafts, scenes, tree, max_new_tokens: int, temperature: float,
            repeats: int) -> list[dict]:
  """Times vanilla and every draft on every scene (configurations rotated per repeat): a row
  each, vanilla first."""
  keys = [jax.random.fold_in(jax.random.PRNGKey(0), i) for i in range(len(scenes))]

  def run(drafter=None, params=None):
    fns = [common.decoder(target, s.batch, max_new_tokens, drafter, params, tree,
                          temperature=temperature, key=k, embeds=s.embeds)
           for s, k in zip(scenes, keys)]
    return lambda: [fn() for fn in fns]

  runs = common.alternate({"vanilla": run(), **{name: run(d.drafter, d.params)
                                                for name, d in drafts.items()}},
                          repeats, rotate=True)
  total = lambda values: sum(int(np.asarray(v)[0]) for v in values)  # over scenes, batch 1 each
  rows = []
  for name, r in runs.items():
    tokens, outputs = total(o.lengths for o in r.out), [vj.trim(o)[0] for o in r.out]
    per_token = r.median / max(tokens, 1)
    if name == "vanilla":
      forwards, accepted, kind = tokens, 0, "vanilla"
      vanilla_outputs, vanilla_per_token = outputs, per_token
    else:
      forwards = total(o.stats.target_forwards for o in r.out)
      accepted, kind = total(o.stats.accepted for o in r.out), drafts[name].config.kind
    tau = accepted / max(forwards, 1)
    rows.append({
        "name": name, "kind": kind, "temperature": temperature, "tokens": tokens,
        "target_forwards": forwards, "tau": tau, "tokens_per_forward": tau + 1.0,
        "tokens_per_s": tokens / r.median if r.median > 0 else 0.0,
        "seconds": r.median, "all_seconds": r.seconds,
        "speedup": vanilla_per_token / per_token if per_token > 0 else 0.0,
        "identical": None if temperature else outputs == vanilla_outputs,
    })
  return rows


def start(args, **info):
  """Checks the options (before loading anything), loads and describes a `table` or `length`
  run: (target, drafts, scenes, tree, setup info)."""
  common.check_args(args)
  drafts = parse_drafts(args.draft)
  if hasattr(args, "out"):  # length's PNG
    if not args.out:
      raise ValueError("--out must name the PNG to write")
    cli.check_output("--out", args.out)
  tree = vj.tree.from_spec(args.tree)
  args.style = common.style(args, args.target)
  target, loaded, scenes = load(args, drafts, tree)
  info = {"target": os.path.abspath(args.target),
          "drafts": {k: os.path.abspath(v) for k, v in drafts.items()},
          "tree": args.tree, "tree_config": dataclasses.asdict(tree), "split": args.split,
          "style": args.style,
          "seeds": [s.seed for s in scenes], "kinds": [s.kind for s in scenes],
          "prompt_tokens": [int(s.batch.prompt_lengths[0]) for s in scenes],
          "repeats": args.repeats, "batch": 1, "backend": jax.default_backend(),
          "devices": [str(d) for d in jax.devices()], "cpu_count": os.cpu_count(),
          "jax": jax.__version__, "loadavg_before": list(os.getloadavg()), **info}
  return target, loaded, scenes, tree, info


def plural(n: int) -> str:
  return f"{n} scene" + ("" if n == 1 else "s")


# ------------------------------------------------------------------------------ table


COLUMNS = [("name", "name", "{}"), ("kind", "kind", "{}"), ("T", "temperature", "{:g}"),
           ("tokens", "tokens", "{}"), ("tau", "tau", "{:.2f}"),
           ("tokens/forward", "tokens_per_forward", "{:.2f}"),
           ("tokens/s", "tokens_per_s", "{:.1f}"), ("speedup", "speedup", "{:.2f}x"),
           ("identical", "identical", "{}")]


def format_table(rows: list[dict], markdown: bool) -> str:
  cells = [common.cells(COLUMNS, {**r, "identical": "n/a (sampling)" if r["identical"] is None
                                  else r["identical"]}) for r in rows]
  head = [h for h, _, _ in COLUMNS]
  widths = [max(len(x) for x in col) for col in zip(head, *cells)]
  left = {0, 1}
  def line(values):
    parts = [v.ljust(w) if j in left else v.rjust(w)
             for j, (v, w) in enumerate(zip(values, widths))]
    return common.md_line(parts) if markdown else "  ".join(parts)
  out = [line(head)]
  if markdown:
    out.append("|" + "|".join(("-" * (w + 1) + ("-" if j in left else ":")) for j, w in
                              enumerate(widths)) + "|")
  out += [line(c) for c in cells]
  return "\n".join(out)


def run_table(args) -> dict:
  target, drafts, scenes, tree, info = start(args, max_new_tokens=args.max_new_tokens)
  print(f"table: {plural(len(scenes))} ({args.split}, seeds {scenes[0].seed}..{scenes[-1].seed}), "
        f"batch 1, up to {args.max_new_tokens} new tokens, tree {args.tree}, median of "
        f"{args.repeats}, {info['backend']}, load average {info['loadavg_before'][0]:.1f}",
        flush=True)
  rows = []
  for temperature in args.temperatures:
    rows += measure(target, drafts, scenes, tree, args.max_new_tokens, temperature, args.repeats)
  info["loadavg_after"] = list(os.getloadavg())
  print(format_table(rows, args.markdown))
  return {"benchmark": "table", "setup": info, "rows": rows}


# ------------------------------------------------------------------------------ length


def run_length(args) -> dict:
  target, drafts, scenes, tree, info = start(args, temperature=args.temperature,
                                             ignore_eos=args.ignore_eos)
  print(f"length: {plural(len(scenes))} ({args.split}), batch 1, T={args.temperature:g}, tree "
        f"{args.tree}, lengths {' '.join(map(str, args.lengths))}, median of {args.repeats}",
        flush=True)
  rows = []
  for n in args.lengths:
    vanilla, *by_draft = measure(target, drafts, scenes, tree, n, args.temperature, args.repeats)
    for r in by_draft:
      rows.append({"name": r["name"], "kind": r["kind"], "max_new_tokens": n,
                   "mean_tokens": r["tokens"] / len(scenes), "tau": r["tau"],
                   "tokens_per_forward": r["tokens_per_forward"], "tokens_per_s": r["tokens_per_s"],
                   "vanilla_tokens_per_s": vanilla["tokens_per_s"], "speedup": r["speedup"],
                   "identical": r["identical"]})
      print(f"  {n:>5} {r['name']:<12} tau {r['tau']:.2f}  {r['tokens_per_s']:.1f} tokens/s "
            f"(vanilla {vanilla['tokens_per_s']:.1f})  speedup {r['speedup']:.2f}x"
            + ("" if r["identical"] is None else f"  identical {r['identical']}"), flush=True)
  info["loadavg_after"] = list(os.getloadavg())
  title = (f"{plural(len(scenes))} ({args.split}), batch 1, T={args.temperature:g}, tree "
           f"{args.tree}" + (", EOS ignored" if args.ignore_eos else ""))
  plot_length(rows, list(drafts), args.out, title)
  print(f"wrote {os.path.abspath(args.out)}")
  return {"benchmark": "length", "setup": info, "rows": rows, "png": os.path.abspath(args.out)}


def _ticks(hi: float) -> list[float]:
  """About five round tick values from 0 to >= hi."""
  step = 10 ** math.floor(math.log10(hi / 5)) if hi > 0 else 1.0
  for m in (1, 2, 2.5, 5, 10):
    if hi / (m * step) <= 6:
      step *= m
      break
  return [step * i for i in range(int(math.ceil(hi / step - 1e-9)) + 1)]


def plot_length(rows: list[dict], names: list[str], path: str, title: str) -> None:
  """Two panels (speedup vs length, tau vs length), one line per draft, drawn with PIL."""
  font = ImageFont.load_default(size=13)
  small = ImageFont.load_default(size=11)
  panel_w, panel_h, margin = 440, 320, dict(left=56, right=16, top=34, bottom=46)
  legend_h = 22 * ((len(names) + 3) // 4) + 10
  width, height = 2 * panel_w, 30 + panel_h + legend_h
  img = Image.new("RGB", (width, height), "white")
  draw = ImageDraw.Draw(img)
  draw.text((width // 2, 8), title, fill="black", font=font, anchor="mt")
  lengths = sorted({r["max_new_tokens"] for r in rows})
  lo, hi = math.log2(lengths[0]), math.log2(lengths[-1])
  colours = {n: LINE_COLOURS[i % len(LINE_COLOURS)] for i, n in enumerate(names)}
  for p, (key, label, ref) in enumerate((("speedup", "speedup (x vanilla)", 1.0),
                                         ("tau", "tau (accepted / forward)", None))):
    x0, y0 = p * panel_w + margin["left"], 30 + margin["top"]
    x1, y1 = (p + 1) * panel_w - margin["right"], 30 + panel_h - margin["bottom"]
    top = max([r[key] for r in rows] + [1.0]) * 1.1
    ticks = _ticks(top)
    top = ticks[-1]
    def xy(length, value):
      fx = 0.5 if hi == lo else (math.log2(length) - lo) / (hi - lo)
      x = x0 + 20 + fx * (x1 - x0 - 40)
      return x, y1 - (value / top) * (y1 - y0)
    for t in ticks:
      _, y = xy(lengths[0], t)
      draw.line([(x0, y), (x1, y)], fill=(230, 230, 230))
      draw.text((x0 - 6, y), f"{t:g}", fill="black", font=small, anchor="rm")
    for n in lengths:
      x, _ = xy(n, 0)
      draw.line([(x, y1), (x, y1 + 4)], fill="black")
      draw.text((x, y1 + 7), str(n), fill="black", font=small, anchor="mt")
    draw.rectangle([x0, y0, x1, y1], outline="black")
    if ref is not None:
      _, y = xy(lengths[0], ref)
      for xs in range(int(x0), int(x1), 8):
        draw.line([(xs, y), (min(xs + 4, x1), y)], fill=(120, 120, 120))
    draw.text(((x0 + x1) / 2, y0 - 8), label, fill="black", font=font, anchor="mb")
    draw.text(((x0 + x1) / 2, y1 + 24), "max new tokens", fill="black", font=small, anchor="mt")
    for name in names:
      pts = [xy(r["max_new_tokens"], r[key]) for r in
             sorted((r for r in rows if r["name"] == name), key=lambda r: r["max_new_tokens"])]
      if len(pts) > 1:
        draw.line(pts, fill=colours[name], width=2)
      for x, y in pts:
        draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colours[name])
  for i, name in enumerate(names):
    x, y = 20 + (i % 4) * (width - 40) // 4, 30 + panel_h + 6 + 22 * (i // 4)
    draw.line([(x, y + 8), (x + 24, y + 8)], fill=colours[name], width=3)
    draw.text((x + 30, y + 8), name, fill="black", font=font, anchor="lm")
  img.save(path)


# ------------------------------------------------------------------------------ main


def main(args) -> int:
  """Runs `table` or `length` (parsed by infer/bench.py, whose errors are one line, exit 2)."""
  result = run_table(args) if args.command == "table" else run_length(args)
  return common.finish(args, result, all(r["identical"] is not False for r in result["rows"]))
