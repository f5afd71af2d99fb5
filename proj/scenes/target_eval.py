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
  content_acc         token_acc over the tokens of scene words only (colours, shapes, sizes,
  content_acc_swapped textures, rows, columns, numbers: generator.SCENE_WORDS), with the own and the
                      swapped image: the answer's grammar and phrasing are left out, so this is
                      how well the model names what is in the picture when its context is right
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
from proj.scenes import generator as scenes
import vispec_jax as vj
from vispec_jax.target import batch_from_rows


def sentences(text: str) -> list[str]:
  return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]


def scene_word_spans(text: str) -> list[tuple[int, int]]:
  """The character spans of the scene words (generator.SCENE_WORDS) in `text`."""
  return [m.span() for m in re.finditer(r"[A-Za-z]+", text)
          if m.group().lower() in scenes.SCENE_WORDS]


def scene_word_weights(tokenizer, weight: float) -> np.ndarray:
  """float32 [vocab]: `weight` for every token that is a whole scene word (" red", " star"; a
  word the tokenizer splits, such as most capitalised ones, is not), 1 for the others: the
  target trainer's per-token loss weights (config.scene_word_weight)."""
  out = np.ones(len(tokenizer), np.float32)
  for token, i in tokenizer.get_vocab().items():
    if tokenizer.convert_tokens_to_string([token]).strip().lower() in scenes.SCENE_WORDS:
      out[i] = weight
  return out


def content_mask(offsets, text: str) -> np.ndarray:
  """Per token of `text` (its tokenizer's offset_mapping): does it overlap a scene word?"""
  spans = scene_word_spans(text)
  return np.array([any(a < y and x < b for x, y in spans) for a, b in offsets], bool)


def teacher_forced(target, batch, answers: list[np.ndarray], rotate: int = 0) -> list[np.ndarray]:
  """Per row of `batch`, whether each answer token is the model's top-1 prediction after the
  prompt and the answer so far (bool [len(answer)]); the rows' images are rotated by `rotate`."""
  p = batch.input_ids.shape[1]
  prompts = [batch.input_ids[i, p - n:] for i, n in enumerate(batch.prompt_lengths)]
  items = [[it] for it in batch.vision]
  items = items[rotate:] + items[:rotate]
  rows = [np.concatenate([pr, a]).astype(np.int32) for pr, a in zip(prompts, answers)]
  full = batch_from_rows(target, rows, items)
  logits, _ = target.forward(target.params, full)
  pred = np.asarray(logits).argmax(-1)
  length = full.input_ids.shape[1]
  hits = []
  for i, (pr, a) in enumerate(zip(prompts, answers)):
    start = length - len(rows[i]) + len(pr)           # first answer token of row i
    hits.append(pred[i, start - 1:start - 1 + len(a)] == a)  # position t predicts token t + 1
  return hits


def evaluate(target, inputs, scenes: int, max_new_tokens: int, batch_size: int = 8) -> dict:
  """The metrics of the module docstring over the first `scenes` inputs ({"question", "image",
  "answer"}), plus one example."""
  tok = target.tokenizer
  eos = list(target.config.eos_token_ids[:1])
  own, swapped, content = [], [], []   # per answer: token hits (own / swapped image), word mask
  gen_sent = ref_sent = matched_gen = matched_ref = exact = 0
  example = None
  n = min(scenes, len(inputs))
  for lo in range(0, n, batch_size):
    rows = [inputs[i] for i in range(lo, min(lo + batch_size, n))]
    batch = vj.prepare(target, [r["question"] for r in rows], images=[[r["image"]] for r in rows])
    enc = [tok(r["answer"], add_special_tokens=False, return_offsets_mapping=True) for r in rows]
    answers = [np.asarray(e["input_ids"] + eos, np.int32) for e in enc]
    own += teacher_forced(target, batch, answers)
    content += [np.append(content_mask(e["offset_mapping"], r["answer"]), False)  # EOS: no word
                for e, r in zip(enc, rows)]
    if len(rows) > 1:
      swapped += teacher_forced(target, batch, answers, rotate=1)
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
  def acc(hits, words_only=False):
    if not hits:
      return None
    if words_only:
      hits = [h[m] for h, m in zip(hits, content)]
    return float(np.concatenate(hits).mean()) if sum(map(len, hits)) else None

  return {"scenes": n, "token_acc": acc(own), "token_acc_swapped": acc(swapped),
          "content_acc": acc(own, True), "content_acc_swapped": acc(swapped, True),
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
