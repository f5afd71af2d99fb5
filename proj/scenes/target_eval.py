"""The held-out check of a scenes target: do its answers follow the image?

    python -m proj.scenes.target_eval --model FOLDER --input tfds:scenes_dataset:validation \
        --tfds-data-dir data/tfds [--scenes 16] [--max-new-tokens 640]

On scenes it never trained on (image, question, reference answer), prompted as
`vj.prepare(target, [question], images=[[image]])` (what `infer.generate` does):

  token_acc           teacher forcing: the share of reference answer tokens (and its EOS) that
                      are the model's top-1 prediction given the image, the question and the
                      reference answer so far
  token_acc_swapped   the same with the images of the batch rotated by one row (each question
                      and answer is paired with another scene's image): what the text alone
                      explains. The gap to token_acc is what the model reads from the image.
  sentence_precision  free greedy generation: the share of generated sentences that appear word
                      for word among the reference answer's sentences
  sentence_recall     the share of reference sentences that the generation contains word for word
  exact               the share of answers generated exactly (all sentences, same order)

Phrasings are drawn at random in the dataset (e.g. the opening sentence), so a perfect model
stays below 1 on every metric; compare models and the swapped control, not against 1.
"""

from __future__ import annotations

import argparse
import json
import re
import sys

import numpy as np

from configs import common
from train import cli, datagen
import vispec_jax as vj
from vispec_jax.target import batch_from_rows


def sentences(text: str) -> list[str]:
  return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]


def teacher_forced(target, batch, answers: list[np.ndarray], rotate: int = 0) -> tuple[int, int]:
  """(correct, total) top-1 predictions of the answer tokens after each prompt of `batch`; the
  rows' images are rotated by `rotate` rows."""
  p = batch.input_ids.shape[1]
  prompts = [batch.input_ids[i, p - n:] for i, n in enumerate(batch.prompt_lengths)]
  items = [[it] for it in batch.vision]
  items = items[rotate:] + items[:rotate]
  rows = [np.concatenate([pr, a]).astype(np.int32) for pr, a in zip(prompts, answers)]
  full = batch_from_rows(target, rows, items)
  logits, _ = target.forward(target.params, full)
  pred = np.asarray(logits).argmax(-1)
  length = full.input_ids.shape[1]
  correct = total = 0
  for i, (pr, a) in enumerate(zip(prompts, answers)):
    start = length - len(rows[i]) + len(pr)           # first answer token of row i
    guess = pred[i, start - 1:start - 1 + len(a)]      # position t predicts token t + 1
    correct += int(np.sum(guess == a))
    total += len(a)
  return correct, total


def evaluate(target, inputs, scenes: int, max_new_tokens: int, batch_size: int = 8) -> dict:
  """The metrics of the module docstring over the first `scenes` inputs ({"question", "image",
  "answer"}), plus one example."""
  tok = target.tokenizer
  eos = list(target.config.eos_token_ids[:1])
  hit = total = hit_sw = total_sw = 0
  gen_sent = ref_sent = matched_gen = matched_ref = exact = 0
  example = None
  n = min(scenes, len(inputs))
  for lo in range(0, n, batch_size):
    rows = [inputs[i] for i in range(lo, min(lo + batch_size, n))]
    batch = vj.prepare(target, [r["question"] for r in rows], images=[[r["image"]] for r in rows])
    answers = [np.asarray(tok(r["answer"], add_special_tokens=False)["input_ids"] + eos, np.int32)
               for r in rows]
    c, t = teacher_forced(target, batch, answers)
    hit, total = hit + c, total + t
    if len(rows) > 1:
      c, t = teacher_forced(target, batch, answers, rotate=1)
      hit_sw, total_sw = hit_sw + c, total_sw + t
    out = vj.trim(vj.generate(target, batch, max_new_tokens=max_new_tokens))
    for r, ids in zip(rows, out):
      text = tok.decode(ids, skip_special_tokens=True)
      gen, ref = sentences(text), sentences(r["answer"])
      gen_sent, ref_sent = gen_sent + len(gen), ref_sent + len(ref)
      matched_gen += sum(s in set(ref) for s in gen)
      matched_ref += sum(s in set(gen) for s in ref)
      exact += gen == ref
      if example is None:
        example = {"question": r["question"], "reference": r["answer"], "generated": text}
  return {"scenes": n, "token_acc": hit / max(total, 1),
          "token_acc_swapped": hit_sw / total_sw if total_sw else None,
          "sentence_precision": matched_gen / max(gen_sent, 1),
          "sentence_recall": matched_ref / max(ref_sent, 1), "exact": exact / max(n, 1),
          "example": example}


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(prog="python -m proj.scenes.target_eval", description=__doc__.split("\n")[0])
  ap.add_argument("--model", required=True, help="an exported target folder")
  ap.add_argument("--input", default="tfds:scenes_dataset:validation")
  ap.add_argument("--tfds-data-dir", default="data/tfds")
  ap.add_argument("--scenes", type=int, default=16)
  ap.add_argument("--max-new-tokens", type=int, default=640)
  ap.add_argument("--batch-size", type=int, default=8)
  args = ap.parse_args(argv)
  cfg = common.base_config().datagen
  cfg.update(dict(tfds_data_dir=args.tfds_data_dir, answer_key="answer"))
  out = evaluate(vj.load_target(args.model), datagen.load_inputs(args.input, cfg), args.scenes,
                 args.max_new_tokens, args.batch_size)
  print(json.dumps(out, indent=1))
  return 0


if __name__ == "__main__":
  cli.setup()
  sys.exit(main())
