"""Training data generation: the target answers prompts, the answers become ArrayRecord shards.

    python -m train.datagen --config configs/tiny_qwen.py [--config.datagen.input=prompts.jsonl]

Stage-2 recipe of vispec-reference.md section 6.1: each input is (question, image); the prompt is
system text + user turn [question, image, "Please answer with at least 1000 words."], the target
answers greedily (`vj.generate`, `datagen.max_new_tokens`), and the record keeps the prompt and
the answer as one token sequence with a loss mask on the answer. An input that carries an
"answer" is stored with that answer instead (stage-1 style: original responses, no generation).

Inputs (`datagen.input`):
  path/to/file.jsonl      one {"question": str, "image": path (relative to the file) or null,
                          "answer": optional str} per line
  tfds:NAME[/CONFIG]:SPLIT a TFDS dataset readable without TensorFlow (array_record) under
                          `datagen.tfds_data_dir` (SPLIT may be sliced: train[-2048:]), with
                          fields `datagen.question_key`, `datagen.image_key` (uint8 or PNG
                          bytes) and, if `datagen.answer_key` is set, answers to keep instead
                          of generating
  synthetic:N             N generated test pictures with a handful of questions (tests, demos)

Images are resized to `datagen.image_size` (height, width) before the target sees them, so all
records share one vision layout (training batches have static shapes).

Output: a TFDS dataset (`VispecDraftData`, builder config `data.name`) under `data.dir`, written
by a `GeneratorBasedBuilder` as ArrayRecord shards. Features per record:
  index        int64        input index (every input appears exactly once)
  tokens       int32 [L]    prompt + answer (answer ends with EOS if the target produced it)
  loss_mask    uint8 [L]    1 on answer tokens
  prompt_length int32
  positions    int32 [R, L] the target's position ids (R = 3 for Qwen mRoPE, else 1)
  image        uint8 [H, W, 3] (zlib), has_image int32, image_grid int32 [3] (t, h, w)
  features, embeds  float [L, E]  (only with `datagen.store_features`): the target's last-layer
               features and input embeddings, for training without running the target
Metadata (metadata.json): lengths of every record, image size, target family.

Resuming: inputs are cut into chunks of `datagen.chunk_size`; each generated chunk is written to
`<data.dir>/<name>_chunks/chunk-NNNNN.pkl` under a temporary name and renamed when complete.
A restarted run reuses finished chunks and generates the rest; the TFDS build itself (which
writes to an `incomplete.*` folder and renames it) runs once every chunk exists. Killed at any
point and restarted, every input ends up in the dataset exactly once. Independent workers can
share the chunks: `--config.datagen.worker=i --config.datagen.num_workers=n`. The settings that
decide the records are kept in `signature.json` next to the chunks: a run with other settings is
refused (naming them) instead of returning the old data, or with `datagen.overwrite=True` the
old data is deleted and generated again. A second run of the same worker fails at once (a lock
file, docs/errors.md).
"""

from __future__ import annotations

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
from collections.abc import Sequence

import numpy as np
from absl import flags, logging
from ml_collections import config_flags
from PIL import Image
from tqdm import tqdm

from configs import common
from infer import cli as checks
from train import cli, loop, targets
import vispec_jax as vj
from vispec_jax.target import batch_from_rows
from vispec_jax import processing, testing

SYNTHETIC_QUESTIONS = [
    "Describe the image in detail.", "What colour is the square?", "How many circles are there?",
    "What is in the top left corner?", "Describe the shapes and their colours.",
]


# --------------------------------------------------------------------------- inputs


def load_inputs(spec: str, cfg) -> Sequence[dict]:
  """A random-access sequence of {"question", "image" (PIL or None), "answer" (optional)}."""
  if spec.startswith("synthetic:"):
    return _Synthetic(int(spec.split(":", 1)[1]))
  if spec.startswith("tfds:"):
    return _Tfds(spec[5:], cfg)
  return _Jsonl(spec)


class _Synthetic:
  def __init__(self, n: int):
    self.n = n

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    return {"question": SYNTHETIC_QUESTIONS[i % len(SYNTHETIC_QUESTIONS)],
            "image": testing.scene_image(seed=i)}


class _Jsonl:
  """A .jsonl input, every line checked when it is opened (before the target is loaded): a
  non-empty "question" string, "image" a path (relative to the file) of an existing file or
  null, "answer" a string or null."""

  def __init__(self, path: str):
    if not os.path.isfile(path):
      raise FileNotFoundError(f"datagen input not found: {path}")
    self.root = os.path.dirname(os.path.abspath(path))
    self.rows = []
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
        full = image if os.path.isabs(image) else os.path.join(self.root, image)
        if not os.path.isfile(full):
          raise FileNotFoundError(f"{where}: image not found: {full}")
      if answer is not None:
        if not isinstance(answer, str):
          raise ValueError(f"{where}: answer must be a string or null, got {json.dumps(answer)}")
        checks.check_text(f"{where}: answer", answer)
      self.rows.append(row)

  def __len__(self):
    return len(self.rows)

  def __getitem__(self, i):
    row = self.rows[i]
    image = row.get("image")
    if image is not None:
      image = processing.load_image(image if os.path.isabs(image) else os.path.join(self.root, image))
    return {"question": row["question"], "image": image, "answer": row.get("answer")}


def tfds_name_and_split(spec: str) -> tuple[str, str]:
  """"scenes_dataset:train[-2048:]" -> ("scenes_dataset", "train[-2048:]") (slices hold colons)."""
  head, bracket, rest = spec.partition("[")
  if ":" not in head:
    raise ValueError(f"datagen input tfds:{spec}: expected tfds:NAME[/CONFIG]:SPLIT")
  name, split = head.rsplit(":", 1)
  return name, split + bracket + rest


class _Tfds:
  def __init__(self, spec: str, cfg):
    import tensorflow_datasets as tfds
    name, split = tfds_name_and_split(spec)
    self.src = tfds.data_source(name, split=split, data_dir=cfg.get("tfds_data_dir"))
    self.q, self.im, self.a = cfg.question_key, cfg.image_key, cfg.get("answer_key")

  def __len__(self):
    return len(self.src)

  def __getitem__(self, i):
    ex = self.src[i]
    q = ex[self.q]
    q = q.decode() if isinstance(q, bytes) else str(q)
    img = ex.get(self.im)
    if isinstance(img, bytes):
      img = Image.open(io.BytesIO(img)).convert("RGB")
    elif img is not None:
      img = Image.fromarray(np.asarray(img, np.uint8)).convert("RGB")
    out = {"question": q, "image": img}
    if self.a:  # keep the dataset's answers instead of generating (stage-1 style)
      a = ex[self.a]
      out["answer"] = a.decode() if isinstance(a, bytes) else str(a)
    return out


# ------------------------------------------------------------------------- prompting


def render_prompt(target, question: str, has_image: bool, system: str, instruction: str,
                  image_first: bool = False) -> str:
  """The reference's stage-2 prompt: system, then the user turn [question, image, instruction]
  ([image, question, instruction] with `image_first`, the order `vj.prepare` uses for a prompt
  without markers). The image is left as the library's `<image>` marker for
  `vj.prepare(chat=False)`."""
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


IMAGE_POSITIONS = ("after", "before", "mixed")


def image_first(position: str, index: int) -> bool:
  """Whether input `index` puts its image before the question: "after" (the reference), "before"
  (as `vj.prepare` does), or "mixed" (even inputs before, odd after: a model trained on it
  answers either layout)."""
  if position not in IMAGE_POSITIONS:
    raise ValueError(f"datagen.image_position must be one of {IMAGE_POSITIONS}, got {position!r}")
  return position == "before" or (position == "mixed" and index % 2 == 0)


# ------------------------------------------------------------------------ generation


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

  @property
  def num_inputs(self) -> int:
    return len(self.inputs)

  def _image(self, img):
    if img is None:
      return None
    if self.image_hw is None:
      raise ValueError("an input has an image but datagen.image_size is not set")
    h, w = self.image_hw
    return img.convert("RGB").resize((w, h), Image.BICUBIC)

  def chunk(self, start: int, stop: int) -> list[dict]:
    """Records of inputs [start, stop), in input order."""
    out = []
    bs = self.cfg.batch_size
    for lo in range(start, stop, bs):
      out.extend(self._batch(list(range(lo, min(lo + bs, stop)))))
    return out

  def _batch(self, indices: list[int]) -> list[dict]:
    t, cfg = self.target, self.cfg
    inputs = [self.inputs[i] for i in indices]
    images = [self._image(x.get("image")) for x in inputs]
    prompts = [render_prompt(t, x["question"], im is not None, cfg.system_prompt, cfg.instruction,
                             image_first(cfg.image_position, i))
               for i, x, im in zip(indices, inputs, images)]
    batch = vj.prepare(t, prompts, images=[[im] if im is not None else [] for im in images],
                       chat=False)
    p = batch.input_ids.shape[1]
    prompt_rows = [batch.input_ids[i, p - n:] for i, n in enumerate(batch.prompt_lengths)]
    answers = [None] * len(inputs)
    todo = [i for i, x in enumerate(inputs) if not x.get("answer")]
    if todo:
      out = vj.generate(t, batch, max_new_tokens=cfg.max_new_tokens, temperature=0.0)
      gen = vj.trim(out)
      vision_ids = [v for v in (t.config.image_token_id, t.config.video_token_id) if v is not None]
      for i in todo:
        a = np.asarray(gen[i], np.int32)
        bad = np.flatnonzero(np.isin(a, vision_ids))
        if len(bad):  # only untrained models do this; a vision token needs an image
          logging.warning("input %d: answer cut before a generated vision token", indices[i])
          a = a[:bad[0]]
        answers[i] = a
    eos = list(t.config.eos_token_ids[:1])
    for i, x in enumerate(inputs):
      if answers[i] is None:
        ids = t.tokenizer(x["answer"], add_special_tokens=False)["input_ids"]
        answers[i] = np.asarray(list(ids)[:cfg.max_new_tokens] + eos, np.int32)
    # Items per row, in prompt order (one image at most per input).
    items, k = [], 0
    for im in images:
      items.append(batch.vision[k:k + 1] if im is not None else [])
      k += im is not None
    rows = [np.concatenate([pr, a]).astype(np.int32) for pr, a in zip(prompt_rows, answers)]
    full = batch_from_rows(t, rows, items)
    feats = embeds = None
    if cfg.store_features:
      embeds_all = t.embed(t.params, full)
      _, hidden = t.forward(t.params, full)
      feats, embeds = np.asarray(hidden), np.asarray(embeds_all)
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
      if feats is not None:
        dt = np.dtype(cfg.feature_dtype)
        rec["features"] = feats[i, length - n:].astype(dt)
        rec["embeds"] = embeds[i, length - n:].astype(dt)
      records.append(rec)
    return records


# ------------------------------------------------------------------------ chunk files


def chunk_dir(config) -> str:
  return os.path.join(config.data.dir, f"{config.data.name}_chunks")


def chunk_path(config, k: int) -> str:
  return os.path.join(chunk_dir(config), f"chunk-{k:05d}.pkl")


SIGNATURE_KEYS = ("input", "image_size", "system_prompt", "instruction", "image_position",
                  "max_new_tokens", "chunk_size", "store_features", "feature_dtype", "answer_key",
                  "question_key", "image_key")


def signature(config) -> dict:
  """The settings that decide the data (written to <data.dir>/<name>_chunks/signature.json).
  The target: its folder when it generates the answers; when the answers are kept
  (`answer_key`) only its tokenizer and config matter, so `target_files` is a digest of the
  folder's small files (config, tokenizer, processor, chat template), not its path."""
  sig = {k: config.datagen.get(k) for k in SIGNATURE_KEYS}
  sig["image_size"] = list(sig["image_size"]) if sig["image_size"] else None
  folder = config.target.folder
  if config.datagen.get("answer_key"):
    sig["target_files"] = _small_files_digest(folder) if os.path.isdir(folder) else folder
  else:
    sig["target"] = folder
  return sig


def _small_files_digest(folder: str) -> str:
  h = hashlib.sha256()
  for name in sorted(os.listdir(folder)):
    path = os.path.join(folder, name)
    if name.endswith((".json", ".jinja", ".txt", ".model")) and os.path.isfile(path):
      with open(path, "rb") as f:
        h.update(name.encode() + b"\0" + f.read() + b"\0")
  return h.hexdigest()[:16]


def check_signature(config) -> None:
  """Data (chunks and the built dataset) is reused only by a run with the same inputs and
  generation settings. Data made with other settings is refused, or with
  `datagen.overwrite=True` deleted and generated again. Data without a signature (built before
  signatures were written) is taken as made with these settings, and signed."""
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
    shutil.rmtree(os.path.join(config.data.dir, "vispec_draft_data", config.data.name),
                  ignore_errors=True)
    os.makedirs(chunk_dir(config))
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(sig, f, indent=1)
  os.replace(tmp, path)


def write_chunk(path: str, records: list[dict]) -> None:
  """Atomically: a temporary name in the same folder, then a rename."""
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "wb") as f:
    pickle.dump(records, f, protocol=pickle.HIGHEST_PROTOCOL)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def read_chunk(path: str) -> list[dict]:
  with open(path, "rb") as f:
    return pickle.load(f)


def generate_chunks(config, generator: Generator | None = None) -> int:
  """Generates every missing chunk of this worker; returns how many inputs were generated."""
  cfg = config.datagen
  gen = generator or Generator(config)
  n = gen.num_inputs
  size = cfg.chunk_size
  num_chunks = -(-n // size)
  check_signature(config)
  mine = [k for k in range(num_chunks) if k % cfg.num_workers == cfg.worker]
  for k in mine:
    for stale in glob.glob(glob.escape(chunk_path(config, k)) + ".tmp*"):
      os.remove(stale)  # a previous run of this worker died while writing it
  todo = [k for k in mine if not os.path.exists(chunk_path(config, k))]
  done = sum(min(size, n - k * size) for k in mine if k not in todo)
  total = sum(min(size, n - k * size) for k in mine)
  bar = tqdm(total=total, initial=done, unit="sample", desc="datagen", dynamic_ncols=True,
             disable=not cfg.progress)
  generated = 0
  for n_done, k in enumerate(todo, 1):
    lo, hi = k * size, min((k + 1) * size, n)
    t0 = time.time()
    records = gen.chunk(lo, hi)
    write_chunk(chunk_path(config, k), records)
    generated += hi - lo
    bar.update(hi - lo)
    logging.info("chunk %d: inputs [%d, %d) in %.1fs", k, lo, hi, time.time() - t0)
    if n_done == cfg.crash_after_chunks:  # tests: die mid-run
      os.kill(os.getpid(), signal.SIGKILL)
  bar.close()
  return generated


# ----------------------------------------------------------------------------- TFDS


@functools.lru_cache(maxsize=None)
def _builder_class():
  """The TFDS builder (made on first use: importing TFDS is slow)."""
  import tensorflow_datasets as tfds

  class VispecDraftData(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Target-generated draft training data (see train/datagen.py)."""
    VERSION = tfds.core.Version("1.0.0")
    code_path = None  # no checksums file next to the code (and no importlib_resources lookup)

    def __init__(self, *, spec: dict | None = None, chunks: list[str] | None = None, **kwargs):
      self._spec = spec
      self._chunks = chunks
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
        for rec in read_chunk(path):
          lengths.append(len(rec["tokens"]))
          yield int(rec["index"]), rec
      md = self.info.metadata
      md["lengths"] = lengths
      md.update({k: v for k, v in self._spec.items()})

  return VispecDraftData


def dataset_dir(config) -> str:
  """The folder of the built TFDS dataset (what `tfds.builder_from_directory` opens)."""
  return os.path.join(config.data.dir, "vispec_draft_data", config.data.name, "1.0.0")


def build(config, generator: Generator) -> str:
  """Writes the TFDS dataset from the finished chunks; returns its folder."""
  import tensorflow_datasets as tfds
  n = generator.num_inputs
  num_chunks = -(-n // config.datagen.chunk_size)
  chunks = [chunk_path(config, k) for k in range(num_chunks)]
  missing = [c for c in chunks if not os.path.exists(c)]
  if missing:
    raise RuntimeError(f"{len(missing)} chunks are not generated yet (first: {missing[0]}); run "
                       "the other workers first")
  t = generator.target
  spec = {"image_hw": list(generator.image_hw) if generator.image_hw else None,
          "position_rows": 3 if t.config.family == "qwen2_5_vl" else 1,
          "feature_dim": t.config.text.hidden_size if config.datagen.store_features else 0,
          "feature_dtype": config.datagen.feature_dtype, "family": t.config.family,
          "num_inputs": n,
          "num_vision_tokens": generator.vision.num_tokens if generator.vision else 0}
  base = os.path.join(config.data.dir, "vispec_draft_data", config.data.name)
  for stale in glob.glob(os.path.join(base, "incomplete.*")):
    shutil.rmtree(stale, ignore_errors=True)  # a build that died before its rename
  cls = _builder_class()
  builder = cls(spec=spec, chunks=chunks, data_dir=config.data.dir, file_format="array_record",
                config=tfds.core.BuilderConfig(name=config.data.name))
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(verify_ssl=False, try_download_gcs=False))
  return builder.data_dir


def run(config) -> str | None:
  """Generates the missing chunks, then (when all exist) builds the dataset. Returns its folder,
  or None when other workers still have chunks to write.

  Checked first, before the target is loaded: the config (configs/common.py:check), the
  inputs, and the settings of data already there (check_signature). A second run of the same
  worker on the same data fails at once (a lock file next to the chunks); workers building the
  dataset at the same time take turns."""
  common.check(config)
  cfg = config.datagen
  if not cfg.input.startswith(("synthetic:", "tfds:")):
    load_inputs(cfg.input, cfg)  # a missing file or a bad line: before the target is loaded
  os.makedirs(config.data.dir, exist_ok=True)
  lock = os.path.join(config.data.dir, f"{config.data.name}.worker-{cfg.worker}.lock")
  with loop.exclusive(lock, f"datagen output {config.data.dir} ({config.data.name}, worker "
                            f"{cfg.worker})"):
    check_signature(config)
    if os.path.isfile(os.path.join(dataset_dir(config), "dataset_info.json")):
      logging.info("dataset already built: %s", dataset_dir(config))
      return dataset_dir(config)
    gen = Generator(config)
    generate_chunks(config, gen)
    n = gen.num_inputs
    num_chunks = -(-n // cfg.chunk_size)
    if not all(os.path.exists(chunk_path(config, k)) for k in range(num_chunks)):
      logging.info("this worker is done; other workers' chunks are still missing")
      return None
  with loop.exclusive(os.path.join(config.data.dir, f"{config.data.name}.build.lock"),
                      "the dataset build", wait=True):
    if os.path.isfile(os.path.join(dataset_dir(config), "dataset_info.json")):
      return dataset_dir(config)  # another worker built it meanwhile
    out = build(config, gen)
  logging.info("wrote %d records to %s", n, out)
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
