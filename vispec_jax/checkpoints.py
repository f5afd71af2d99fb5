"""Reading Hugging Face checkpoint folders into params pytrees.

A small safetensors reader (memory-mapped, one tensor at a time, bf16 through ml_dtypes) so that
loading never holds two full copies of the weights and a truncated file is reported by name.
Each family supplies a name map: checkpoint tensor name -> (params path, transform). Several
spellings of the same tensor (transformers 4 vs 5 module names) are folded by prefix rules.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np


class CheckpointError(ValueError):
  """A checkpoint folder that cannot be loaded; the message names the file or tensor."""


_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_, "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2,
}


def read_config(folder: str) -> dict[str, Any]:
  if not os.path.isdir(folder):
    raise CheckpointError(f"checkpoint folder not found: {folder}")
  path = os.path.join(folder, "config.json")
  if not os.path.isfile(path):
    raise CheckpointError(f"no config.json in {folder}")
  try:
    with open(path) as f:
      return json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise CheckpointError(f"{path} is not valid JSON: {e}") from None


def weight_files(folder: str) -> list[str]:
  """The safetensors files of a folder: from the shard index if present, else *.safetensors."""
  index = os.path.join(folder, "model.safetensors.index.json")
  if os.path.isfile(index):
    with open(index) as f:
      shards = sorted(set(json.load(f)["weight_map"].values()))
    files = [os.path.join(folder, s) for s in shards]
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
      raise CheckpointError(f"shard(s) listed in {index} are missing: {missing}")
    return files
  files = sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".safetensors"))
  if not files:
    raise CheckpointError(f"no weights (*.safetensors) in {folder}")
  return files


class SafetensorsFile:
  """A memory-mapped safetensors file; `get(name)` returns a read-only NumPy view."""

  def __init__(self, path: str):
    self.path = path
    size = os.path.getsize(path)
    with open(path, "rb") as f:
      head = f.read(8)
      if len(head) < 8:
        raise CheckpointError(f"{path}: truncated safetensors file ({size} bytes)")
      (n,) = struct.unpack("<Q", head)
      if n > size - 8:
        raise CheckpointError(f"{path}: truncated or corrupt safetensors header")
      try:
        header = json.loads(f.read(n))
      except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{path}: corrupt safetensors header") from None
    header.pop("__metadata__", None)
    self.header = header
    self.data_start = 8 + n
    end = max((v["data_offsets"][1] for v in header.values()), default=0)
    if self.data_start + end > size:
      raise CheckpointError(f"{path}: truncated safetensors file: header needs "
                            f"{self.data_start + end} bytes, file has {size}")
    self._mm = np.memmap(path, dtype=np.uint8, mode="r") if size else None

  def keys(self) -> list[str]:
    return list(self.header)

  def get(self, name: str) -> np.ndarray:
    info = self.header[name]
    if info["dtype"] not in _DTYPES:
      raise CheckpointError(f"{self.path}: tensor {name} has unsupported dtype {info['dtype']}")
    a, b = info["data_offsets"]
    raw = self._mm[self.data_start + a:self.data_start + b]
    return raw.view(_DTYPES[info["dtype"]]).reshape(info["shape"])


def iter_tensors(files: list[str]) -> Iterator[tuple[str, np.ndarray]]:
  for path in files:
    f = SafetensorsFile(path)
    for name in f.keys():
      yield name, f.get(name)


# ------------------------------------------------------------------------ name maps


class Transform(NamedTuple):
  """How a checkpoint tensor becomes our parameter (`load`) and back (`save`)."""
  load: Callable[[np.ndarray], np.ndarray]
  save: Callable[[np.ndarray], np.ndarray]


IDENTITY = Transform(lambda a: a, lambda a: a)
TRANSPOSE = Transform(lambda a: a.T, lambda a: a.T)  # torch Linear [out, in] <-> kernel [in, out]


class NameMap:
  """Checkpoint tensor name -> list of (params path, transform).

  `prefix_rules` rewrite alternative spellings to the canonical one before lookup, first match
  wins. A name may fan out to several params (a fused qkv split into q, k and v).
  """

  def __init__(self, prefix_rules: list[tuple[str, str]]):
    self.rules = prefix_rules
    self.entries: dict[str, list[tuple[tuple, Transform]]] = {}
    self.optional: set[str] = set()

  def add(self, name: str, path: tuple, fn: Transform = IDENTITY):
    """`name` -> `path`. Several adds with one name split a fused tensor along axis 0, in order."""
    self.entries.setdefault(name, []).append((path, fn))

  def ignore(self, name: str):
    """A tensor that may be present and is not needed (e.g. a tied lm_head)."""
    self.optional.add(name)

  def canonical(self, name: str) -> str:
    for old, new in self.rules:
      if name.startswith(old):
        return new + name[len(old):]
    return name


def _get_path(tree, path):
  for p in path:
    tree = tree[p]
  return tree


def _set_path(tree, path, value):
  for p in path[:-1]:
    tree = tree[p]
  tree[path[-1]] = value


def load_params(files: list[str], name_map: NameMap, shapes, dtype, shardings=None) -> Any:
  """Fills a params tree with the structure of `shapes` (ShapeDtypeStruct leaves) from files.

  With `shardings` (a tree of NamedSharding like `shapes`), each tensor is placed straight into
  its sharded layout and every device's slice is read from the memory-mapped file on its own, so
  a host reads only the slices its devices hold.
  Raises CheckpointError naming every unexpected and missing tensor, or the first shape mismatch.
  """
  params = jax.tree.map(lambda _: None, shapes)
  unexpected, seen = [], set()
  for name, array in iter_tensors(files):
    canon = name_map.canonical(name)
    if canon not in name_map.entries:
      if canon not in name_map.optional:
        unexpected.append(name)
      continue
    seen.add(canon)
    for path, fn in name_map.entries[canon]:
      value = fn.load(array)
      want = _get_path(shapes, path).shape
      if tuple(value.shape) != tuple(want):
        raise CheckpointError(
            f"shape mismatch for tensor {name}: checkpoint gives {tuple(value.shape)} after "
            f"conversion (stored {tuple(array.shape)}), model expects {tuple(want)}")
      np_dtype = np.dtype(dtype)
      if shardings is None:
        # Cast on the host (ml_dtypes handles bf16), then one device copy of this tensor only.
        _set_path(params, path, jnp.asarray(np.asarray(value, dtype=np_dtype)))
      else:
        _set_path(params, path, jax.make_array_from_callback(
            tuple(want), _get_path(shardings, path),
            lambda index, value=value: np.asarray(value[index], dtype=np_dtype)))
  missing = sorted(set(name_map.entries) - seen)
  if unexpected or missing:
    parts = []
    if missing:
      parts.append(f"missing tensors: {missing[:20]}" + (" ..." if len(missing) > 20 else ""))
    if unexpected:
      parts.append(f"unexpected tensors: {unexpected[:20]}" + (" ..." if len(unexpected) > 20 else ""))
    raise CheckpointError("checkpoint does not match the model: " + "; ".join(parts))
  return params


# ------------------------------------------------------------------------- writing


def write_safetensors(tensors: dict[str, np.ndarray], path: str, metadata: dict | None = None):
  """Writes a safetensors file atomically (temporary name, then rename); bf16 supported."""
  names = {np.dtype(v): k for k, v in _DTYPES.items()}
  header, offset, arrays = {}, 0, []
  for name, a in tensors.items():
    a = np.ascontiguousarray(a)
    if a.dtype not in names:
      raise CheckpointError(f"cannot store tensor {name} of dtype {a.dtype}")
    header[name] = {"dtype": names[a.dtype], "shape": list(a.shape),
                    "data_offsets": [offset, offset + a.nbytes]}
    offset += a.nbytes
    arrays.append(a)
  if metadata:
    header["__metadata__"] = metadata
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * (-len(blob) % 8)
  tmp = path + ".tmp"
  with open(tmp, "wb") as f:
    f.write(struct.pack("<Q", len(blob)))
    f.write(blob)
    for a in arrays:
      f.write(a.tobytes())
  os.replace(tmp, path)


def save_hf(params, name_map: NameMap, path: str, dtype=None):
  """Writes params under their Hugging Face names (the inverse of `load_params`)."""
  tensors = {}
  for name, entries in name_map.entries.items():
    parts = [fn.save(np.asarray(_get_path(params, p))) for p, fn in entries]
    t = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
    tensors[name] = t if dtype is None else t.astype(dtype)
  write_safetensors(tensors, path, {"format": "pt"})


def write_folder(out: str, write: Callable[[str], Any]) -> str:
  """Calls `write(tmp)` on a fresh temporary folder next to `out`, then renames it onto `out`
  (an existing `out` is replaced): readers see the old folder or the complete new one."""
  out = os.path.abspath(out)
  parent = os.path.dirname(out)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=os.path.basename(out) + ".tmp-", dir=parent)
  try:
    write(tmp)
    old = None
    if os.path.exists(out):
      old = tempfile.mkdtemp(prefix=os.path.basename(out) + ".old-", dir=parent)
      os.rmdir(old)
      os.rename(out, old)
    os.rename(tmp, out)
    if old:
      shutil.rmtree(old, ignore_errors=True)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return out
