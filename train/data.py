"""The grain input pipeline: datagen's ArrayRecord records -> padded, fixed-shape batches.

indices -> seeded shuffle (per epoch) -> global batches of record indices -> `LoadBatch`: this
process's rows read, cut to max_len, right-padded to the global batch's length bucket (from the
metadata's lengths, so processes agree without talking). The result does not depend on the
number of processes; the iterator's state goes into every checkpoint (docs/training.md).

Batch arrays (b local batch, L bucket length): ids, attention_mask, answer [b, L], lengths [b],
positions [b, R, L] (R = 3 for mRoPE), vision_index [b, L] (-1 for text), pixels [b, ...]
(with images), features/embeds [b, L, E] (precomputed), index [b]; host only: HOST_KEYS.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import grain
import jax
import numpy as np


def dataset_dir(data_dir: str, name: str) -> str:
  """The folder of the TFDS dataset `name` datagen built under `data_dir`."""
  return os.path.join(data_dir, "vispec_draft_data", name, "1.0.0")


def open_dataset(path: str):
  """(random-access source of records, metadata dict) of a dataset folder written by datagen."""
  import tensorflow_datasets as tfds
  if not os.path.isfile(os.path.join(path, "dataset_info.json")):
    raise FileNotFoundError(f"no dataset at {path}: run `python -m train.datagen --config ...` "
                            "with the same config first")
  builder = tfds.builder_from_directory(path)
  source = builder.as_data_source(split="train")
  meta = dict(builder.info.metadata or {})
  if "lengths" not in meta or len(meta["lengths"]) != len(source):
    raise ValueError(f"{path}: metadata.json has no record lengths matching the "
                     f"{len(source)} records (was it written by train.datagen?)")
  return source, meta


class Lazy:
  """A random-access sequence of `n` items: item i is `get(i)`, made when it is read."""

  def __init__(self, n: int, get):
    self.n, self.get = n, get

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    if not 0 <= i < self.n:
      raise IndexError(i)
    return self.get(i)


def bucket(length: int, buckets, max_len: int) -> int:
  """The smallest bucket holding `length` (capped at max_len); max_len if none does."""
  length = min(length, max_len)
  return next((b for b in sorted(buckets) if length <= b <= max_len), max_len)


@dataclasses.dataclass(frozen=True)
class Collator:
  """Record dicts -> one padded batch (host side, NumPy)."""
  pad_id: int
  vision_token_ids: tuple[int, ...]
  max_len: int
  vision: Any = None           # train.targets.VisionAdapter, for datasets with images
  precomputed: bool = False    # read features/embeds from the records

  @classmethod
  def for_target(cls, config, target, vision=None, precomputed: bool = False) -> Collator:
    """The collator of `target`'s records, cut to `config.data.max_len`."""
    return cls(pad_id=target.config.pad_token_id, vision_token_ids=target.config.vision_token_ids,
               max_len=config.data.max_len, vision=vision, precomputed=precomputed)

  def __call__(self, records: list[dict], length: int) -> dict[str, np.ndarray]:
    b = len(records)
    rows = max(int(np.asarray(records[0]["positions"]).shape[0]), 1)
    out = {"ids": np.full((b, length), self.pad_id, np.int32),
           "attention_mask": np.zeros((b, length), bool),
           "answer": np.zeros((b, length), bool),
           "lengths": np.zeros((b,), np.int32),
           "positions": np.zeros((b, rows, length), np.int32),
           "vision_index": np.full((b, length), -1, np.int32),
           "index": np.zeros((b,), np.int64)}
    if self.precomputed:
      e = np.asarray(records[0]["features"]).shape[-1]
      out.update({k: np.zeros((b, length, e), np.float32) for k in ("features", "embeds")})
    for i, rec in enumerate(records):
      tokens = np.asarray(rec["tokens"])[:length]
      n = len(tokens)
      out["ids"][i, :n] = tokens
      out["attention_mask"][i, :n] = True
      out["answer"][i, :n] = np.asarray(rec["loss_mask"])[:n] > 0
      out["lengths"][i] = n
      out["positions"][i, :, :n] = np.asarray(rec["positions"])[:, :n]
      vis = np.isin(tokens, self.vision_token_ids)
      out["vision_index"][i, :n] = np.where(vis, np.cumsum(vis) - 1, -1)
      out["index"][i] = int(rec["index"])
      if self.precomputed:
        for k in ("features", "embeds"):
          out[k][i, :n] = np.asarray(rec[k], np.float32)[:n]
    if self.vision is not None:
      out["pixels"] = np.stack([self.vision.pixels(np.asarray(r["image"], np.uint8))
                                for r in records])
    return out


@dataclasses.dataclass(frozen=True)
class LoadBatch:
  """Global batch of record indices -> this process's padded slice (a grain map function)."""
  source: Any
  lengths: np.ndarray          # every record's length (metadata)
  collate: Collator
  buckets: tuple[int, ...]
  process_index: int
  process_count: int

  def __call__(self, global_index: np.ndarray) -> dict[str, np.ndarray]:
    global_index = np.asarray(global_index, np.int64)
    length = bucket(int(self.lengths[global_index].max()), self.buckets, self.collate.max_len)
    per = len(global_index) // self.process_count
    mine = global_index[self.process_index * per:(self.process_index + 1) * per]
    out = self.collate([self.source[int(i)] for i in mine], length)
    out["global_index"] = global_index
    out["global_tokens"] = np.int64(np.minimum(self.lengths[global_index], length).sum())
    return out


HOST_KEYS = ("global_index", "global_tokens")


class Records:
  """A trainer's records: the dataset at `folder` (the first `data.limit`), its train and held-out
  split, the run's length and warmup in steps, and grain datasets of global batches.

  `data.mix` (optional, {"name", "weight", "datagen"}): a second dataset under data.dir (built
  by datagen earlier, e.g. stage 1's inventories, or from `datagen.mix_config`) whose records
  make up a `weight` fraction of the train rows, drawn independently of the main dataset's; the
  held-out records stay the main's."""

  def __init__(self, config, folder: str):
    self.config = config
    self.source, self.meta = open_dataset(folder)
    if config.data.limit:  # e.g. overfitting checks
      self.source = Lazy(min(config.data.limit, len(self.source)), self.source.__getitem__)
      self.meta = dict(self.meta, lengths=self.meta["lengths"][:config.data.limit])
    n, frac = len(self.source), config.data.eval_fraction  # the last frac are held out
    n_eval = min(n - 1, math.ceil(n * frac)) if frac > 0 and n > 1 else 0
    self.train_idx, self.eval_idx = np.arange(n - n_eval), np.arange(n - n_eval, n)
    self.held = self.eval_idx if len(self.eval_idx) else self.train_idx
    self.mix_idx, self.mix_weight = None, 0.0
    mix = config.data.get("mix") or {}
    if mix.get("weight", 0.0) > 0:
      self._add_mix(dataset_dir(config.data.dir, mix["name"]), float(mix["weight"]))
    steps_per_epoch = max(1, len(self.train_idx) // config.batch_size)
    self.total = int(config.total_steps or config.num_epochs * steps_per_epoch)
    self.warmup = int(config.warmup_steps if config.warmup_steps is not None
                      else config.warmup_epochs * steps_per_epoch)

  def _add_mix(self, folder: str, weight: float) -> None:
    """Appends the mixed-in dataset's records after the main ones (one index space)."""
    source, meta = open_dataset(folder)
    for key in ("image_hw", "position_rows", "family", "feature_dim"):
      if meta.get(key) != self.meta.get(key):
        raise ValueError(f"data.mix {folder} has {key}={meta.get(key)!r}, the main dataset "
                         f"{self.meta.get(key)!r}: mix datasets made by the same target")
    main, n = self.source, len(self.source)
    self.source = Lazy(n + len(source), lambda i: main[i] if i < n else source[i - n])
    self.meta = dict(self.meta, lengths=list(self.meta["lengths"]) + list(meta["lengths"]))
    self.mix_idx, self.mix_weight = np.arange(n, n + len(source)), weight

  def dataset(self, collate: Collator, train: bool) -> grain.MapDataset:
    """Shuffled train batches (with `data.mix`'s rows mixed in) or held-out ones in order (the
    train split if none), endless."""
    c, nproc = self.config, jax.process_count()
    if c.batch_size % nproc:
      raise ValueError(f"batch size {c.batch_size} is not a multiple of the {nproc} processes")
    indices = self.train_idx if train else self.held
    if len(indices) == 0:
      raise ValueError("no records to read (is the dataset or the split empty?)")
    ds = grain.MapDataset.source(np.asarray(indices, np.int64))
    if train:
      ds = ds.shuffle(seed=c.data.shuffle_seed).repeat(None)
      if self.mix_idx is not None:
        other = grain.MapDataset.source(self.mix_idx).shuffle(seed=c.data.shuffle_seed + 1)
        ds = grain.MapDataset.mix([ds, other.repeat(None)],
                                  [1.0 - self.mix_weight, self.mix_weight])
    else:
      ds = ds.repeat(None)
    ds = ds.batch(c.batch_size, drop_remainder=True)
    return ds.map(LoadBatch(self.source, np.asarray(self.meta["lengths"], np.int64), collate,
                            tuple(c.data.buckets), jax.process_index(), nproc))

  def train_iter(self, collate: Collator):
    """A resumable iterator (`get_state`/`set_state`) of train batches; grain worker processes
    when `data.worker_count` > 0."""
    prefetch, workers = max(1, self.config.data.prefetch), self.config.data.worker_count
    it = self.dataset(collate, True).to_iter_dataset(
        grain.ReadOptions(num_threads=prefetch, prefetch_buffer_size=prefetch))
    if workers > 0:
      it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
    return iter(it)
