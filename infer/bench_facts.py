"""`python -m infer.bench facts`: does a scenes target state true facts about its image?

Held-out scenes (`proj.scenes.generator.sample(SPLIT_SEEDS[split] + i)`), prompted as
infer/demo.py does, answered greedily with `vj.generate`; every answer's facts are checked
against its scene (`proj.scenes.facts.check`): precision and recall, pooled and as per-scene
means, per fact class too. `--control` pairs every question with the next scene's image and
scores against the question's scene: a target that reads its image falls to chance there.
For the questions about one colour or shape (kinds colour, shape and their inventories) it also
counts the answers whose first sentence answers the question, and answers it correctly
(`proj.scenes.facts.answers_question`): a target can state true facts and ignore the question.
"""

from __future__ import annotations

import os

import vispec_jax as vj
from infer import bench_common as common
from proj.scenes import facts as scene_facts, generator as scenes
from proj.scenes.generator import SPLIT_SEEDS


def add_parser(sub):
  p = sub.add_parser("facts", help="fact precision and recall of a scenes target's greedy answers "
                                   "on held-out scenes (and with other scenes' images)")
  p.add_argument("--target", required=True, help="target folder")
  p.add_argument("--scenes", type=int, default=32, help="held-out scenes")
  p.add_argument("--split", choices=list(SPLIT_SEEDS), default="validation",
                 help="seed range of the scenes (proj/scenes/generator.py SPLIT_SEEDS)")
  common.add_style_option(p)
  p.add_argument("--kind", choices=scenes.KINDS + scenes.SHORT_KINDS, default=None,
                 help="one question kind (default: each scene's own, from the long kinds)")
  p.add_argument("--max-new-tokens", type=int, default=512)
  p.add_argument("--batch-size", type=int, default=8, help="rows per generate call")
  p.add_argument("--control", action="store_true",
                 help="also answer with every scene's image replaced by the next scene's")
  p.add_argument("--json", default=None, metavar="PATH", help="also write the results here")
  p.set_defaults(main=main)


def answers(target, questions: list[str], images: list, max_new_tokens: int,
            batch_size: int) -> list[str]:
  """Greedy answers, `batch_size` rows per `vj.generate` call."""
  out = []
  for lo in range(0, len(questions), batch_size):
    rows = slice(lo, lo + batch_size)
    batch = vj.prepare(target, questions[rows], images=[[im] for im in images[rows]])
    for ids in vj.trim(vj.generate(target, batch, max_new_tokens=max_new_tokens)):
      out.append(target.tokenizer.decode(ids, skip_special_tokens=True))
  return out


def measure(target, examples: list[dict], max_new_tokens: int, batch_size: int,
            control: bool) -> dict:
  """{"own": pooled, ["control": pooled]}; each pooled result (scene_facts.pool) also lists the
  scenes: seed, kind, precision, recall, facts stated / correct, false facts, the answer."""
  questions = [e["question"] for e in examples]
  images = {"own": [e["image"] for e in examples]}
  if control:
    images["control"] = images["own"][1:] + images["own"][:1]
  result = {}
  for name, ims in images.items():
    texts = answers(target, questions, ims, max_new_tokens, batch_size)
    reports = [scene_facts.check(e["scene"], t) for e, t in zip(examples, texts)]
    pooled = scene_facts.pool(reports)
    answered = [scene_facts.answers_question(e["scene"], e["asked"], t) if e["asked"] else None
                for e, t in zip(examples, texts)]
    asked = [a for a in answered if a is not None]
    pooled["question"] = {"asked": len(asked), "addressed": sum(a for a, _ in asked),
                          "correct": sum(c for _, c in asked)}
    pooled["scenes"] = [
        {"seed": e["seed"], "kind": e["kind"], "precision": r.precision, "recall": r.recall,
         "stated": r.stated, "correct": r.correct, "unparsed": r.unparsed,
         "false": r.false_facts, "question": a, "answer": t}
        for e, r, a, t in zip(examples, reports, answered, texts)]
    result[name] = pooled
  return result


def report(result: dict) -> str:
  lines = []
  for name, p in result.items():
    label = "own images" if name == "own" else "control (each scene with the next one's image)"
    lines.append(f"{label}: {p['answers']} answers, {p['correct']} of {p['stated']} facts true: "
                 f"precision {p['precision']:.3f} (mean per scene {p['mean_precision']:.3f}), "
                 f"recall {p['recall']:.3f} (mean {p['mean_recall']:.3f}); "
                 f"sentences not parsed: {p['unparsed']}, answers cut at the token limit: "
                 f"{p['truncated']}")
    q = p["question"]
    if q["asked"]:
      lines.append(f"  {q['asked']} questions about one colour or shape: the first sentence "
                   f"answers {q['addressed']}, correctly {q['correct']}")
  names = list(result)
  classes = sorted({c for p in result.values() for c in p["by_class"]})
  lines.append(f"{'class':14s}"
               + "".join(f"{n + ' stated':>16s}{n + ' prec.':>14s}" for n in names))
  for c in classes:
    row = f"{c:14s}"
    for n in names:
      v = result[n]["by_class"].get(c, {"stated": 0, "precision": 0.0})
      row += f"{v['stated']:16d}{v['precision']:14.3f}"
    lines.append(row)
  return "\n".join(lines)


def main(args) -> int:
  """Runs `facts` (parsed by infer/bench.py, whose errors are one line, exit 2)."""
  common.check_args(args)
  args.style = common.style(args, args.target)
  target = vj.load_target(args.target)
  examples = [scenes.sample(SPLIT_SEEDS[args.split] + i, kind=args.kind, style=args.style)
              for i in range(args.scenes)]
  result = measure(target, examples, args.max_new_tokens, args.batch_size, args.control)
  result = {"target": os.path.abspath(args.target), "split": args.split, "style": args.style,
            "kind": args.kind, "max_new_tokens": args.max_new_tokens, **result}
  print(report({k: v for k, v in result.items() if k in ("own", "control")}))
  return common.finish(args, result, True)
