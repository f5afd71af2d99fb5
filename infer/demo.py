"""`python -m infer.demo`: one scene, answered with vanilla and with speculative decoding.

    python -m infer.demo [--seed 7] [--kind describe] [--out demo.png] [--json]
    python -m infer.demo --model DIR --draft DIR     # any target + draft pair

Draws a procedural scene (proj/scenes), answers its question greedily with `vj.generate` and
with `vj.speculative_generate` (ViSpec draft), checks that the two are token-identical, reports
tau, tokens per target forward and the speedup measured in this run (after one warm-up call of
each; the image is encoded once, outside the timings) and checks the answer's facts against the
scene. `--out` draws the image beside the answer, the accepted draft tokens in green. The
default models are the ones the project trains and ships in models/scenes
(docs/embedded-model.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
from PIL import Image, ImageDraw, ImageFont

import vispec_jax as vj
from infer import bench_common as common, cli
from proj.scenes import facts as scene_facts, generator as scenes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = os.path.join(REPO, "models", "scenes")
DEFAULT_TREE = "chain5"
DRAFT_COLOUR, TARGET_COLOUR = (26, 127, 55), (20, 20, 20)


def parse_args(argv):
  p = cli.ArgumentParser(prog="python -m infer.demo", description=__doc__.split("\n")[0],
                         epilog=__doc__.split("\n", 2)[2],
                         formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--model", default=os.path.join(SHIPPED, "target"), help="target folder")
  p.add_argument("--draft", default=os.path.join(SHIPPED, "vispec"), help="draft folder")
  p.add_argument("--seed", type=int, default=100_000_007, help="scene seed (default: held out)")
  p.add_argument("--kind", default=None, choices=scenes.KINDS,
                 help="question kind (default: drawn from the seed)")
  common.add_style_option(p)
  p.add_argument("--max-new-tokens", type=int, default=512)
  p.add_argument("--tree", default=DEFAULT_TREE,
                 help="dynamic (EAGLE-2: depth 3, top_k 8, 30 tokens), dynamic-dDkKtT or chainN "
                      f"(default {DEFAULT_TREE}: measured best for the shipped models on CPU)")
  p.add_argument("--repeats", type=int, default=1, help="timed runs of each (median)")
  p.add_argument("--out", default="demo.png", help="PNG of the image and the coloured answer")
  p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
  return p.parse_args(argv)


def validate(args):
  """Every option checked before a model is loaded (each error names it); returns the tree."""
  cli.check_int("--seed", args.seed, 0, cli.SEED_MAX)
  cli.check_int("--max-new-tokens", args.max_new_tokens, 1)
  cli.check_int("--repeats", args.repeats, 1)
  tree = cli.prefixed("--tree", vj.tree.from_spec, args.tree)
  for name, folder in (("--model", args.model), ("--draft", args.draft)):
    if not os.path.isdir(folder):
      hint = (" (the shipped models are built as docs/embedded-model.md says)"
              if folder.startswith(SHIPPED) else "")
      raise FileNotFoundError(f"{name} folder not found: {folder}{hint}")
  if args.out:
    cli.check_output("--out", args.out)
  return tree


def run(args) -> dict:
  tree = validate(args)
  args.style = common.style(args, args.model)
  example = scenes.sample(args.seed, kind=args.kind, style=args.style)
  target = vj.load_target(args.model)
  draft = vj.load_draft(args.draft, target)
  batch = vj.prepare(target, [example["question"]], images=[[example["image"]]])
  embeds = target.embed(target.params, batch)
  n = args.max_new_tokens
  runs = common.alternate({
      "vanilla": common.decoder(target, batch, n, embeds=embeds),
      "speculative": common.decoder(target, batch, n, draft.drafter, draft.params, tree,
                                    embeds=embeds)}, args.repeats)
  base, spec = runs["vanilla"].out, runs["speculative"].out
  tokens = vj.trim(base)[0]
  length = int(np.asarray(spec.lengths)[0])
  identical = vj.trim(spec)[0] == tokens
  med = {k: r.median for k, r in runs.items()}
  tau = float(np.asarray(spec.stats.tau)[0])
  answer = target.tokenizer.decode(tokens, skip_special_tokens=True)
  result = {
      "seed": args.seed, "style": args.style, "kind": example["kind"],
      "question": example["question"], "answer": answer, "tokens": len(tokens), "identical": bool(identical), "tau": tau,
      "tokens_per_forward": tau + 1,
      "target_forwards": int(np.asarray(spec.stats.target_forwards)[0]),
      "vanilla_s": med["vanilla"], "speculative_s": med["speculative"],
      "vanilla_tokens_per_s": len(tokens) / med["vanilla"],
      "speculative_tokens_per_s": length / med["speculative"],
      "speedup": med["vanilla"] / med["speculative"], "tree": args.tree, "png": None,
  }
  facts = scene_facts.check(example["scene"], answer)  # what the answer states vs the scene
  result.update(facts_correct=facts.correct, facts_stated=facts.stated,
                facts_precision=facts.precision, facts_recall=facts.recall,
                facts_false=facts.false_facts, facts_verdict=facts.verdict())
  if args.out:
    pieces = [target.tokenizer.decode([t], skip_special_tokens=True) for t in tokens]
    drafted = np.asarray(spec.drafted)[0, :len(tokens)].tolist()
    render(example["image"], example["question"], pieces, drafted, result).save(args.out)
    result["png"] = os.path.abspath(args.out)
  return result


def render(image, question: str, pieces: list[str], drafted: list[bool], result: dict):
  """The image beside the question and answer; accepted draft tokens in green."""
  font = ImageFont.load_default(size=13)
  width, margin, line_h = 760, 12, 17
  lines, line, x = [], [], 0
  for piece, from_draft in zip(pieces, drafted):
    for k, part in enumerate(piece.split("\n")):
      if k > 0 or x + font.getlength(part) > width - 2 * margin:
        lines.append(line)
        line, x, part = [], 0, part.lstrip()
      line.append((part, DRAFT_COLOUR if from_draft else TARGET_COLOUR))
      x += font.getlength(part)
  header = [f"Q: {question}",
            f"tau {result['tau']:.2f}   speedup {result['speedup']:.2f}x   identical to vanilla: "
            f"{result['identical']}   green: accepted draft tokens, black: the target's own", ""]
  lines = [[(text, TARGET_COLOUR)] for text in header] + lines + [line]
  height = max(image.height + 2 * margin, len(lines) * line_h + 2 * margin)
  canvas = Image.new("RGB", (image.width + width + margin, height), "white")
  canvas.paste(image.convert("RGB"), (margin, margin))
  draw = ImageDraw.Draw(canvas)
  for row, parts in enumerate(lines):
    x, y = image.width + 2 * margin, margin + row * line_h
    for part, colour in parts:
      draw.text((x, y), part, fill=colour, font=font)
      x += font.getlength(part)
  return canvas


def main(argv=None) -> int:
  """Bad folders, checkpoints, options: one `error:` line, exit 2 (infer/cli.py)."""
  return cli.run(lambda: _main(parse_args(argv)))


def _main(args) -> int:
  result = run(args)
  if args.json:
    print(json.dumps(result))
  else:
    print(f"Q: {result['question']}\n\n{result['answer']}\n")
    print(f"{result['tokens']} tokens; tau {result['tau']:.2f} "
          f"({result['tokens_per_forward']:.2f} tokens per target forward); "
          f"vanilla {result['vanilla_tokens_per_s']:.1f} tokens/s, speculative "
          f"{result['speculative_tokens_per_s']:.1f} tokens/s: speedup {result['speedup']:.2f}x; "
          f"identical: {result['identical']}")
    print(result["facts_verdict"])
    if result["png"]:
      print(f"wrote {result['png']}")
  return 0 if result["identical"] else 1


if __name__ == "__main__":
  sys.exit(main())
