"""Training data generation: the target answers prompts, the answers become ArrayRecord shards.

    python -m train.datagen --config configs/tiny_qwen.py [--config.datagen.input=prompts.jsonl]

The reference's stage-2 recipe (vispec-reference.md 6.1): the prompt is system text + the user
turn [question, image, instruction], the target answers greedily, and a record keeps prompt +
answer as one token sequence with a loss mask on the answer; an input with an "answer" keeps it
(stage 1). Inputs: a .jsonl file, tfds:NAME[/CONFIG]:SPLIT or synthetic:N; images are resized to
`datagen.image_size` (one vision layout, static shapes). Output: a TFDS dataset of ArrayRecord
shards under `data.dir`, built from chunk files a killed run resumes from; `signature.json`
refuses data made with other settings. Features and resume rules: docs/training.md.
"""

from __future__ import annotations

import copy
import functools
import glob
import hashlib
import io
import json
import os
import pickle
import shutil
import signal
import time

import numpy as np
from absl import flags, logging
from ml_collections import config_flags
from PIL import Image
from tqdm import tqdm

from configs import common
from infer import cli as checks
from train import cli, data, loop, targets
import vispec_jax as vj
from vispec_jax.target import batch_from_rows
from vispec_jax import processing, testing

SYNTHETIC_QUESTIONS = [
    "Describe the image in detail.", "What colour is the square?", "How many circles are there?",
    "What is in the top left corner?", "Describe the shapes and their colours.",
]


def load_inputs(spec: str, cfg) -> data.Lazy:
  """A random-access sequence of {"question", "image" (PIL or None), "answer" (optional)}."""
  if spec.startswith("synthetic:"):
    return data.Lazy(int(spec.split(":", 1)[1]), lambda i: {
        "question": SYNTHETIC_QUESTIONS[i % len(SYNTHETIC_QUESTIONS)],
        "image": testing.scene_image(seed=i)})
  if spec.startswith("tfds:"):
    return _tfds(spec[5:], cfg)
  return _jsonl(spec)


def _jsonl(path: str) -> data.Lazy:
  """A .jsonl input, every line checked when it is opened (before the target is loaded)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"datagen input not found: {path}")
  root = os.path.dirname(os.path.abspath(path))
  rows = []
  for where, row in checks.read_jsonl(path, ValueError):
    if not isinstance(row, dict) or not isinstance(row.get("question"), str) or not row[
        "question"].strip():
      raise ValueError(f"{where}: needs a non-empty \"question\" string")
    for wrong, right in (("images", "image"), ("prompt", "question"), ("answers", "answer")):
      if wrong in row:
        raise ValueError(f"{where}: unknown key {wrong!r} (did you mean {right!r}?)")
    checks.check_text(f"{where}: question", row["question"])
    image, answer = row.get("image"), row.get("answer")
    if image is not None:
      if not isinstance(image, str) or not image:
        raise ValueError(f"{where}: image must be a path (a non-empty string) or null, got "
                         f"{json.dumps(image)}")
      row["image"] = os.path.join(root, image)  # an absolute image path stays as it is
      if not os.path.isfile(row["image"]):
        raise FileNotFoundError(f"{where}: image not found: {row['image']}")
    if answer is not None:
      if not isinstance(answer, str):
        raise ValueError(f"{where}: answer must be a string or null, got {json.dumps(answer)}")
      checks.check_text(f"{where}: answer", answer)
    rows.append(row)

  def get(i):
    row = rows[i]
    image = row.get("image")
    return {"question": row["question"], "answer": row.get("answer"),
            "image": processing.load_image(image) if image is not None else None}

  return data.Lazy(len(rows), get)


def tfds_name_and_split(spec: str) -> tuple[str, str]:
  """"scenes_dataset:train[-2048:]" -> ("scenes_dataset", "train[-2048:]") (slices hold colons)."""
  head, bracket, rest = spec.partition("[")
  if ":" not in head:
    raise ValueError(f"datagen input tfds:{spec}: expected tfds:NAME[/CONFIG]:SPLIT")
  name, split = head.rsplit(":", 1)
  return name, split + bracket + rest


def _tfds(spec: str, cfg) -> data.Lazy:
  import tensorflow_datasets as tfds
  name, split = tfds_name_and_split(spec)
  src = tfds.data_source(name, split=split, data_dir=cfg.get("tfds_data_dir"))

  def text(x):
    return x.decode() if isinstance(x, bytes) else str(x)

  def get(i):
    ex = src[i]
    img = ex.get(cfg.image_key)
    if isinstance(img, bytes):
      img = Image.open(io.BytesIO(img)).convert("RGB")
    elif img is not None:
      img = Image.fromarray(np.asarray(img, np.uint8)).convert("RGB")
    out = {"question": text(ex[cfg.question_key]), "image": img}
    if cfg.get("answer_key"):  # keep the dataset's answers instead of generating (stage 1)
      out["answer"] = text(ex[cfg.answer_key])
    return out

  return data.Lazy(len(src), get)


def render_prompt(target, question: str, has_image: bool, system: str, instruction: str,
                  image_first: bool = False) -> str:
  """The reference's stage-2 prompt: system, then the user turn [question, image, instruction]
  (the image first with `image_first`, as `vj.prepare` places it), the image as the library's
  `<image>` marker for `vj.prepare(chat=False)`."""
  question = question.replace(processing.IMAGE_MARKER, "").strip()
  tok = target.tokenizer
  if getattr(tok, "chat_template", None):
    content = [{"type": "text", "text": question}]
    if has_image:
      content.insert(0 if image_first else 1, {"type": "image"})
    if instruction:
      content.append({"type": "text", "text": instruction})
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": content}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if has_image:  # the template wrote the family's placeholder; hand prepare() the marker
      placeholder = target.family.vision_placeholder(target.config, "image")[0]
      if placeholder not in text:
        raise ValueError(f"the chat template did not render the image placeholder {placeholder!r}")
      text = text.replace(placeholder, processing.IMAGE_MARKER, 1)
    return text
  image = [processing.IMAGE_MARKER] if has_image else []
  parts = [system] + (image + [question] if image_first else [question] + image) + [instruction]
  return "\n".join(p for p in parts if p)


class Generator:
  """Runs the target over chunks of inputs and returns finished records."""

  def __init__(self, config):
    self.cfg = config.datagen
    self.target = targets.load_target(config.target.folder, config.target.dtype,
                                      config.target.get("cache_dir"))
    self.inputs = load_inputs(self.cfg.input, self.cfg)
    self.image_hw = tuple(self.cfg.image_size) if self.cfg.image_size else None
    self.vision = (targets.VisionAdapter.for_target(self.target, self.image_hw) if self.image_hw
                   else None)

  def _image(self, img):
    if img is None:
      return None
    if self.image_hw is None:
      raise ValueError("an input has an image but datagen.image_size is not set")
    return img.convert("RGB").resize(self.image_hw[::-1], Image.BICUBIC)  # PIL takes (w, h)

  def chunk(self, start: int, stop: int) -> list[dict]:
    """Records of inputs [start, stop), in input order."""
    bs = self.cfg.batch_size
    return [rec for lo in range(start, stop, bs)
            for rec in self._batch(list(range(lo, min(lo + bs, stop))))]

  def _batch(self, indices: list[int]) -> list[dict]:
    t, cfg = self.target, self.cfg
    inputs = [self.inputs[i] for i in indices]
    images = [self._image(x.get("image")) for x in inputs]
    first = [cfg.image_position == "before" or (cfg.image_position == "mixed" and i % 2 == 0)
             for i in indices]  # "mixed": even inputs put the image before the question
    prompts = [render_prompt(t, x["question"], im is not None, cfg.system_prompt, cfg.instruction,
                             f) for x, im, f in zip(inputs, images, first)]
    batch = vj.prepare(t, prompts, images=[[im] if im is not None else [] for im in images],
                       chat=False)
    p = batch.input_ids.shape[1]
    prompt_rows = [batch.input_ids[i, p - n:] for i, n in enumerate(batch.prompt_lengths)]
    if not all(x.get("answer") for x in inputs):
      gen = vj.trim(vj.generate(t, batch, max_new_tokens=cfg.max_new_tokens, temperature=0.0))
    eos = list(t.config.eos_token_ids[:1])
    rows = []
    for i, x in enumerate(inputs):
      if x.get("answer"):
        ids = t.tokenizer(x["answer"], add_special_tokens=False)["input_ids"]
        a = np.asarray(list(ids)[:cfg.max_new_tokens] + eos, np.int32)
      else:
        a = np.asarray(gen[i], np.int32)
        bad = np.flatnonzero(np.isin(a, t.config.vision_token_ids))
        if len(bad):  # only untrained models do this; a vision token needs an image
          logging.warning("input %d: answer cut before a generated vision token", indices[i])
          a = a[:bad[0]]
      rows.append(np.concatenate([prompt_rows[i], a]).astype(np.int32))
    vision = iter(batch.vision)  # one item per input with an image, in prompt order
    items = [[next(vision)] if im is not None else [] for im in images]
    full = batch_from_rows(t, rows, items)
    if cfg.store_features:
      dt = np.dtype(cfg.feature_dtype)
      embeds = np.asarray(t.embed(t.params, full)).astype(dt)
      feats = np.asarray(t.forward(t.params, full)[1]).astype(dt)
    records = []
    length = full.input_ids.shape[1]
    for i, idx in enumerate(indices):
      n = len(rows[i])
      pos = full.positions[..., i, length - n:]
      rec = {"index": np.int64(idx), "tokens": rows[i],
             "loss_mask": (np.arange(n) >= len(prompt_rows[i])).astype(np.uint8),
             "prompt_length": np.int32(len(prompt_rows[i])),
             "positions": (pos if pos.ndim == 2 else pos[None]).astype(np.int32)}
      if self.image_hw is not None:
        im = images[i]
        rec["has_image"] = np.int32(im is not None)
        rec["image"] = (np.asarray(im, np.uint8) if im is not None
                        else np.zeros(self.image_hw + (3,), np.uint8))
        rec["image_grid"] = np.asarray(items[i][0].grid_thw if items[i] else (0, 0, 0), np.int32)
      if cfg.store_features:
        rec["features"], rec["embeds"] = feats[i, length - n:], embeds[i, length - n:]
      records.append(rec)
    return records


def chunk_dir(config) -> str:
  return os.path.join(config.data.dir, f"{config.data.name}_chunks")


def chunk_path(config, k: int) -> str:
  return os.path.join(chunk_dir(config), f"chunk-{k:05d}.pkl")


SIGNATURE_KEYS = ("input", "image_size", "system_prompt", "instruction", "image_position",
                  "max_new_tokens", "chunk_size", "store_features", "feature_dtype", "answer_key",
                  "question_key", "image_key")


def signature(config) -> dict:
  """The settings that decide the data (`signature.json` next to the chunks). With kept answers
  (`answer_key`) the target counts only by a digest of its small files (config, tokenizer,
  processor, chat template), not by its path."""
  sig = {k: config.datagen.get(k) for k in SIGNATURE_KEYS}
  sig["image_size"] = list(sig["image_size"]) if sig["image_size"] else None
  folder = config.target.folder
  if config.datagen.get("answer_key"):
    sig["target_files"] = _small_files_digest(folder) if os.path.isdir(folder) else folder
  else:
    sig["target"] = folder
  return sig


# Provenance files a trainer writes next to the weights (where they started): no effect on data.
PROVENANCE_FILES = ("init.json",)


def _small_files_digest(folder: str) -> str:
  h = hashlib.sha256()
  for name in sorted(os.listdir(folder)):
    path = os.path.join(folder, name)
    if (name.endswith((".json", ".jinja", ".txt", ".model")) and os.path.isfile(path)
        and name not in PROVENANCE_FILES):
      with open(path, "rb") as f:
        h.update(name.encode() + b"\0" + f.read() + b"\0")
  return h.hexdigest()[:16]


def check_signature(config) -> None:
  """Data (chunks and the built dataset) made with other settings is refused, or with
  `datagen.overwrite=True` deleted; data without a signature is taken as made with these."""
  os.makedirs(chunk_dir(config), exist_ok=True)
  sig = signature(config)
  path = os.path.join(chunk_dir(config), "signature.json")
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    diff = sorted(k for k in old if k in sig and old[k] != sig[k])  # others: not compared
    if not diff:
      return
    where = f"data.dir {config.data.dir}, data.name {config.data.name}"
    if not config.datagen.get("overwrite"):
      raise ValueError(
          f"{where} holds data generated with other settings ("
          + ", ".join(f"{k}: {old.get(k)!r} there, {sig.get(k)!r} now" for k in diff)
          + "); add --config.datagen.overwrite=True to delete it and generate again, or choose "
          "another data.name")
    logging.warning("%s was generated with other settings (%s): deleting it (datagen.overwrite)",
                    where, ", ".join(diff))
    shutil.rmtree(chunk_dir(config))
    shutil.rmtree(os.path.dirname(dataset_dir(config)), ignore_errors=True)
    os.makedirs(chunk_dir(config))
  loop.write_atomic(path, json.dumps(sig, indent=1).encode())


def generate_chunks(config, gen: Generator) -> None:
  """Generates every missing chunk of this worker (chunk k is inputs [k * size, (k + 1) * size))."""
  cfg, n, size = config.datagen, len(gen.inputs), config.datagen.chunk_size
  mine = [k for k in range(-(-n // size)) if k % cfg.num_workers == cfg.worker]
  for k in mine:
    for stale in glob.glob(glob.escape(chunk_path(config, k)) + ".tmp*"):
      os.remove(stale)  # a previous run of this worker died while writing it
  todo = [k for k in mine if not os.path.exists(chunk_path(config, k))]
  bar = tqdm(total=sum(min(size, n - k * size) for k in mine), unit="sample", desc="datagen",
             initial=sum(min(size, n - k * size) for k in mine if k not in todo),
             dynamic_ncols=True, disable=not cfg.progress)
  for n_done, k in enumerate(todo, 1):
    lo, hi = k * size, min((k + 1) * size, n)
    t0 = time.time()
    records = gen.chunk(lo, hi)
    loop.write_atomic(chunk_path(config, k), pickle.dumps(records, pickle.HIGHEST_PROTOCOL))
    bar.update(hi - lo)
    logging.info("chunk %d: inputs [%d, %d) in %.1fs", k, lo, hi, time.time() - t0)
    if n_done == cfg.crash_after_chunks:  # tests: die mid-run
      os.kill(os.getpid(), signal.SIGKILL)
  bar.close()


@functools.lru_cache(maxsize=None)
def _builder_class():
  """The TFDS builder (made on first use: importing TFDS is slow)."""
  import tensorflow_datasets as tfds

  class VispecDraftData(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Target-generated draft training data (see train/datagen.py)."""
    VERSION = tfds.core.Version("1.0.0")
    code_path = None  # no checksums file next to the code (and no importlib_resources lookup)

    def __init__(self, *, spec: dict | None = None, chunks: list[str] | None = None, **kwargs):
      self._spec, self._chunks = spec, chunks
      super().__init__(**kwargs)

    def _info(self):
      s = self._spec
      T = tfds.features.Tensor
      feats = {"index": np.int64, "tokens": T(shape=(None,), dtype=np.int32),
               "loss_mask": T(shape=(None,), dtype=np.uint8), "prompt_length": np.int32,
               "positions": T(shape=(s["position_rows"], None), dtype=np.int32)}
      if s["image_hw"]:
        feats["image"] = T(shape=tuple(s["image_hw"]) + (3,), dtype=np.uint8, encoding="zlib")
        feats["has_image"] = np.int32
        feats["image_grid"] = T(shape=(3,), dtype=np.int32)
      if s["feature_dim"]:
        dt = np.dtype(s["feature_dtype"])
        feats["features"] = T(shape=(None, s["feature_dim"]), dtype=dt)
        feats["embeds"] = T(shape=(None, s["feature_dim"]), dtype=dt)
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(feats),
                                   metadata=tfds.core.MetadataDict(), disable_shuffling=True)

    def _split_generators(self, dl_manager):
      del dl_manager
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      lengths = []
      for path in self._chunks:
        with open(path, "rb") as f:
          records = pickle.load(f)
        for rec in records:
          lengths.append(len(rec["tokens"]))
          yield int(rec["index"]), rec
      self.info.metadata.update(lengths=lengths, **self._spec)

  return VispecDraftData


def dataset_dir(config) -> str:
  """The folder of the built TFDS dataset (what `tfds.builder_from_directory` opens)."""
  return data.dataset_dir(config.data.dir, config.data.name)


def built(config) -> bool:
  return os.path.isfile(os.path.join(dataset_dir(config), "dataset_info.json"))


def build(config, generator: Generator, chunks: list[str]) -> str:
  """Writes the TFDS dataset from the finished chunks; returns its folder."""
  import tensorflow_datasets as tfds
  t = generator.target
  spec = {"image_hw": list(generator.image_hw) if generator.image_hw else None,
          "position_rows": 3 if t.config.family == "qwen2_5_vl" else 1,
          "feature_dim": t.config.text.hidden_size if config.datagen.store_features else 0,
          "feature_dtype": config.datagen.feature_dtype, "family": t.config.family,
          "num_inputs": len(generator.inputs),
          "num_vision_tokens": generator.vision.num_tokens if generator.vision else 0}
  for stale in glob.glob(os.path.join(os.path.dirname(dataset_dir(config)), "incomplete.*")):
    shutil.rmtree(stale, ignore_errors=True)  # a build that died before its rename
  builder = _builder_class()(spec=spec, chunks=chunks, data_dir=config.data.dir,
                             file_format="array_record",
                             config=tfds.core.BuilderConfig(name=config.data.name))
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(verify_ssl=False, try_download_gcs=False))
  return builder.data_dir


def mix_config(config):
  """The config that builds `data.mix`'s dataset: this one under data.mix.name with
  data.mix.datagen's overrides of config.datagen; None when there are none (built elsewhere)."""
  mix = config.data.get("mix") or {}
  if not mix.get("weight") or not mix.get("datagen"):
    return None
  c = copy.deepcopy(config)
  with c.unlocked():
    c.data.name = mix["name"]
    c.datagen.update(dict(mix["datagen"]))
  return c


def run(config) -> str | None:
  """Generates the missing chunks, then (when all exist) builds the dataset. Returns its folder,
  or None when other workers still have chunks to write. The config, the inputs and the data's
  signature are checked before the target is loaded; a second run of the same worker fails at
  once (a lock file), workers building the dataset at the same time take turns."""
  common.check(config)
  cfg = config.datagen
  if not cfg.input.startswith(("synthetic:", "tfds:")):
    load_inputs(cfg.input, cfg)  # a missing file or a bad line: before the target is loaded
  os.makedirs(config.data.dir, exist_ok=True)
  lock = os.path.join(config.data.dir, f"{config.data.name}.worker-{cfg.worker}.lock")
  with loop.exclusive(lock, f"datagen output {config.data.dir} ({config.data.name}, worker "
                            f"{cfg.worker})"):
    check_signature(config)
    if built(config):
      logging.info("dataset already built: %s", dataset_dir(config))
      return dataset_dir(config)
    gen = Generator(config)
    generate_chunks(config, gen)
    chunks = [chunk_path(config, k) for k in range(-(-len(gen.inputs) // cfg.chunk_size))]
    if not all(os.path.exists(c) for c in chunks):
      logging.info("this worker is done; other workers' chunks are still missing")
      return None
  with loop.exclusive(os.path.join(config.data.dir, f"{config.data.name}.build.lock"),
                      "the dataset build", wait=True):
    if built(config):
      return dataset_dir(config)  # another worker built it meanwhile
    out = build(config, gen, chunks)
  logging.info("wrote %d records to %s", len(gen.inputs), out)
  return out


def main(argv):
  del argv
  cli.setup()
  out = run(flags.FLAGS.config)
  if out:
    print(out)


if __name__ == "__main__":
  config_flags.DEFINE_config_file("config", None, "Training config file (with .datagen).",
                                  lock_config=True)
  flags.mark_flags_as_required(["config"])
  logging.set_verbosity(logging.INFO)
  cli.run(main)
