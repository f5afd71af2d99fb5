"""The grain input pipeline: datagen's ArrayRecord records -> padded, fixed-shape batches.

    indices 0..N-1 (train split)
      -> shuffle(seed), reshuffled every epoch       grain.MapDataset (random access, resumable)
      -> batch(global batch size)                    record indices of one GLOBAL batch
      -> LoadBatch: this process's slice of the global batch, records read, cut to max_len,
         right-padded to the global batch's length bucket, images turned into tower inputs
      -> to_iter_dataset (threads, optional worker processes)

Every process computes the same global batches and loads only its slice (rows
[p * B / P, (p + 1) * B / P)), so the global batch, and the training result, do not depend on the
number of processes. The pad length comes from the record lengths in the dataset's metadata, so
all processes agree on it without talking. The iterator's state (`get_state`/`set_state`, the next
batch index) goes into every checkpoint; a resumed run continues with exactly the next batch.

Batch arrays (b = local batch, L = bucket length):
  ids int32[b, L], attention_mask bool[b, L], answer bool[b, L] (answer tokens),
  lengths int32[b], positions int32[b, R, L] (R = 3 for mRoPE), vision_index int32[b, L] (row's
  vision token of each position, -1 for text), pixels float32[b, ...] (datasets with images),
  features/embeds float32[b, L, E] (precomputed mode), index int64[b] (record indices).
Host-only entries (not sent to devices): global_index int64[B], global_tokens int64.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import grain
import jax
import numpy as np


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


class Subset:
  """The first `n` records of a source."""

  def __init__(self, source, n: int):
    self.source, self.n = source, min(n, len(source))

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    if not 0 <= i < self.n:
      raise IndexError(i)
    return self.source[i]


def split(n: int, eval_fraction: float) -> tuple[np.ndarray, np.ndarray]:
  """(train, eval) record indices: the last `eval_fraction` of the records are held out (the
  reference's 95% / 5% split of its file list)."""
  n_eval = min(n - 1, math.ceil(n * eval_fraction)) if eval_fraction > 0 and n > 1 else 0
  return np.arange(n - n_eval), np.arange(n - n_eval, n)


def bucket(length: int, buckets, max_len: int) -> int:
  """The smallest bucket holding `length` (capped at max_len); max_len if none does."""
  length = min(length, max_len)
  for b in sorted(buckets):
    if length <= b <= max_len:
      return b
  return max_len


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
    ids = tuple(t for t in (target.config.image_token_id, target.config.video_token_id)
                if t is not None)
    return cls(pad_id=target.config.pad_token_id, vision_token_ids=ids,
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
      out["features"] = np.zeros((b, length, e), np.float32)
      out["embeds"] = np.zeros((b, length, e), np.float32)
    pixels = []
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
        out["features"][i, :n] = np.asarray(rec["features"], np.float32)[:n]
        out["embeds"][i, :n] = np.asarray(rec["embeds"], np.float32)[:n]
      if self.vision is not None:
        pixels.append(self.vision.pixels(np.asarray(rec["image"], np.uint8)))
    if self.vision is not None:
      out["pixels"] = np.stack(pixels)
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


def make_dataset(source, lengths, indices, collate: Collator, *, global_batch: int,
                 buckets, seed: int | None, num_epochs: int | None, process_index: int = 0,
                 process_count: int = 1) -> grain.MapDataset:
  """The batched MapDataset over `indices` (seed None: no shuffle, e.g. eval)."""
  if global_batch % process_count:
    raise ValueError(f"batch size {global_batch} is not a multiple of the {process_count} "
                     "processes")
  if len(indices) == 0:
    raise ValueError("no records to read (is the dataset or the split empty?)")
  ds = grain.MapDataset.source(np.asarray(indices, np.int64))
  if seed is not None:
    ds = ds.shuffle(seed=seed)
  ds = ds.repeat(num_epochs).batch(global_batch, drop_remainder=True)
  return ds.map(LoadBatch(source, np.asarray(lengths, np.int64), collate, tuple(buckets),
                          process_index, process_count))


def to_iterator(ds: grain.MapDataset, worker_count: int = 0, prefetch: int = 2):
  """A resumable iterator (`get_state`/`set_state`); worker processes if worker_count > 0."""
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=max(1, prefetch),
                                            prefetch_buffer_size=max(1, prefetch)))
  if worker_count > 0:
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
  return iter(it)


class Records:
  """A trainer's records: the dataset datagen wrote at `folder` (only the first
  `config.data.limit` with a limit), its train and held-out split (`config.data.eval_fraction`),
  the run's length in steps (`total_steps` or `num_epochs`, warmup likewise) and grain datasets
  of global batches over either split, this process's rows."""

  def __init__(self, config, folder: str):
    self.config = config
    self.source, self.meta = open_dataset(folder)
    if config.data.limit:  # e.g. overfitting checks
      self.source = Subset(self.source, config.data.limit)
      self.meta = dict(self.meta, lengths=self.meta["lengths"][:config.data.limit])
    self.train_idx, self.eval_idx = split(len(self.source), config.data.eval_fraction)
    self.held = self.eval_idx if len(self.eval_idx) else self.train_idx
    steps_per_epoch = max(1, len(self.train_idx) // config.batch_size)
    self.total = int(config.total_steps or config.num_epochs * steps_per_epoch)
    self.warmup = int(config.warmup_steps if config.warmup_steps is not None
                      else config.warmup_epochs * steps_per_epoch)

  def dataset(self, collate: Collator, train: bool) -> grain.MapDataset:
    """Train batches (shuffled, `data.shuffle_seed`) or held-out ones (in order; the train
    split when nothing is held out), repeated without end."""
    c = self.config
    return make_dataset(self.source, self.meta["lengths"], self.train_idx if train else self.held,
                        collate, global_batch=c.batch_size, buckets=c.data.buckets,
                        seed=c.data.shuffle_seed if train else None, num_epochs=None,
                        process_index=jax.process_index(), process_count=jax.process_count())

  def train_iter(self, collate: Collator):
    return to_iterator(self.dataset(collate, True), self.config.data.worker_count,
                       self.config.data.prefetch)
