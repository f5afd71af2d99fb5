"""Hugging Face checkpoint folders <-> params pytrees.

A memory-mapped safetensors reader (one tensor at a time: loading never holds two copies of the
weights) and writer. Each family supplies a name map: checkpoint tensor name -> (params path,
transform); prefix rules fold other spellings (transformers 4 vs 5 module names).
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
import numpy as np

from vispec_jax.errors import CheckpointError
from vispec_jax.torch_bin import DTYPES, TorchBinFile

_DTYPES = {name: np_dtype for np_dtype, name in DTYPES.values()}  # safetensors name -> NumPy


def read_json(path: str, what: str = "a JSON object") -> dict[str, Any]:
  """A JSON file that must hold an object; CheckpointError naming the file otherwise."""
  try:
    with open(path) as f:
      raw = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise CheckpointError(f"{path} is not valid JSON: {e}") from None
  except RecursionError:
    raise CheckpointError(f"{path} is not usable JSON: nested too deeply") from None
  if not isinstance(raw, dict):
    raise CheckpointError(f"{path} must hold {what}, got a JSON {type(raw).__name__}")
  return raw


def read_config(folder: str) -> dict[str, Any]:
  if not os.path.isdir(folder):
    raise CheckpointError(f"checkpoint folder not found: {folder}")
  path = os.path.join(folder, "config.json")
  if not os.path.isfile(path):
    raise CheckpointError(f"no config.json in {folder}")
  return read_json(path, "a JSON object (the model config)")


def preprocessor_config(folder: str | None) -> dict[str, Any]:
  """The folder's preprocessor_config.json ({} without a folder or that file)."""
  path = os.path.join(folder, "preprocessor_config.json") if folder else None
  if not path or not os.path.isfile(path):
    return {}
  return read_json(path, "a JSON object (the image processor settings)")


def _shards(folder: str, name: str) -> list[str] | None:
  """The shard files named by index `name`'s weight_map (None without that index), each checked
  to be a file in `folder`."""
  index = os.path.join(folder, name)
  if not os.path.isfile(index):
    return None
  raw = read_json(index, 'a JSON object with a "weight_map"')
  wmap = raw.get("weight_map")
  if not isinstance(wmap, dict):
    raise CheckpointError(f'{index}: "weight_map" must be an object {{tensor name: shard file}}, '
                          f"got {'nothing' if wmap is None else type(wmap).__name__}")
  bad = [k for k, v in wmap.items() if not isinstance(v, str) or not v
         or os.path.isabs(v) or os.path.normpath(v).startswith("..")]
  if bad:
    raise CheckpointError(f'{index}: "weight_map" entries must name a shard file in the folder; '
                          f"bad: {[(k, wmap[k]) for k in bad[:5]]}")
  if not wmap:
    raise CheckpointError(f'{index}: "weight_map" is empty')
  files = [os.path.join(folder, s) for s in sorted(set(wmap.values()))]
  missing = [f for f in files if not os.path.isfile(f)]
  if missing:
    raise CheckpointError(f"shard(s) listed in {index} are missing: {missing}")
  return files


def weight_files(folder: str) -> list[str]:
  """The weight files of a folder, the first found of: the shards of model.safetensors.index.json,
  the *.safetensors files, the shards of pytorch_model.bin.index.json, pytorch_model.bin.
  Safetensors first (no pickle at all; the reference ViSpec loader tries the .bin first)."""
  binary = os.path.join(folder, "pytorch_model.bin")
  files = (_shards(folder, "model.safetensors.index.json")
           or sorted(os.path.join(folder, f) for f in os.listdir(folder)
                     if f.endswith(".safetensors"))
           or _shards(folder, "pytorch_model.bin.index.json")
           or ([binary] if os.path.isfile(binary) else []))
  if not files:
    raise CheckpointError(f"no weights (*.safetensors, pytorch_model.bin or a shard index) in "
                          f"{folder}")
  return files


def open_weights(path: str):
  """A SafetensorsFile, or a TorchBinFile for a torch.save file (same interface)."""
  return SafetensorsFile(path) if path.endswith(".safetensors") else TorchBinFile(path)


def _is_uint(x) -> bool:
  return isinstance(x, int) and not isinstance(x, bool) and x >= 0


class SafetensorsFile:
  """A memory-mapped safetensors file; `get(name)` returns a read-only NumPy view.

  The header is checked when the file is opened: every entry needs a known dtype, a shape of
  non-negative ints and data_offsets [begin, end] of exactly the shape's size inside the file.
  """

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
      except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise CheckpointError(f"{path}: corrupt safetensors header (not JSON)") from None
    if not isinstance(header, dict):
      raise CheckpointError(f"{path}: corrupt safetensors header (a JSON {type(header).__name__}, "
                            "not an object)")
    header.pop("__metadata__", None)
    self.header = header
    self.data_start = 8 + n
    for name, info in header.items():
      self._check(name, info, size - self.data_start)
    self._mm = np.memmap(path, dtype=np.uint8, mode="r") if size else None

  def _check(self, name: str, info, room: int):
    def bad(why):
      raise CheckpointError(f"{self.path}: corrupt safetensors header: tensor {name!r}: {why}")
    if not isinstance(info, dict):
      bad(f"entry is a JSON {type(info).__name__}, not an object")
    for key in ("dtype", "shape", "data_offsets"):
      if key not in info:
        bad(f"missing field {key!r}")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype, str):
      bad(f"dtype must be a string, got {dtype!r:.60}")
    if dtype not in _DTYPES:
      raise CheckpointError(f"{self.path}: tensor {name} has unsupported dtype {dtype!r}; "
                            f"supported: {sorted(_DTYPES)}")
    if not isinstance(shape, list) or not all(_is_uint(d) for d in shape):
      bad(f"shape must be a list of non-negative integers, got {shape!r:.60}")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_uint(o) for o in offsets)
        or offsets[0] > offsets[1]):
      bad(f"data_offsets must be [begin, end] with 0 <= begin <= end, got {offsets!r:.60}")
    if offsets[1] > room:
      raise CheckpointError(f"{self.path}: truncated safetensors file: tensor {name} needs "
                            f"{self.data_start + offsets[1]} bytes, file has {self.data_start + room}")
    nbytes = int(np.prod(shape, dtype=object)) * np.dtype(_DTYPES[dtype]).itemsize
    if offsets[1] - offsets[0] != nbytes:
      bad(f"data_offsets {offsets} span {offsets[1] - offsets[0]} bytes but shape {shape} of "
          f"{dtype} needs {nbytes}")

  def keys(self) -> list[str]:
    return list(self.header)

  def get(self, name: str) -> np.ndarray:
    info = self.header[name]
    a, b = info["data_offsets"]
    raw = self._mm[self.data_start + a:self.data_start + b]
    return raw.view(_DTYPES[info["dtype"]]).reshape(info["shape"])


def iter_tensors(files: list[str]) -> Iterator[tuple[str, np.ndarray]]:
  for path in files:
    f = open_weights(path)
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


def load_params(files: list[str], name_map: NameMap, shapes, dtype, shardings=None) -> Any:
  """Fills a params tree with the structure of `shapes` (ShapeDtypeStruct leaves) from files.

  With `shardings` (a tree of NamedSharding like `shapes`), each tensor is placed straight into
  its sharded layout and every device's slice is read from the memory-mapped file on its own, so
  a host reads only the slices its devices hold.
  Raises CheckpointError naming every unexpected and missing tensor, or the first shape mismatch.
  """
  params = jax.tree.map(lambda _: None, shapes)
  unexpected, seen, np_dtype = [], set(), np.dtype(dtype)
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
      if shardings is None:
        # Cast on the host (ml_dtypes handles bf16), then one device copy of this tensor only.
        leaf = jnp.asarray(np.asarray(value, dtype=np_dtype))
      else:
        leaf = jax.make_array_from_callback(
            tuple(want), _get_path(shardings, path),
            lambda index, value=value: np.asarray(value[index], dtype=np_dtype))
      _get_path(params, path[:-1])[path[-1]] = leaf
  missing = sorted(set(name_map.entries) - seen)
  parts = [f"{what} tensors: {names[:20]}" + (" ..." if len(names) > 20 else "")
           for what, names in (("missing", missing), ("unexpected", unexpected)) if names]
  if parts:
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
    f.write(struct.pack("<Q", len(blob)) + blob)
    for a in arrays:
      f.write(a.tobytes())
  os.replace(tmp, path)


def save_hf(params, name_map: NameMap, path: str, dtype=None, extra=None, fmt: str = "pt"):
  """Writes params under their checkpoint names (the inverse of `load_params`), then the
  tensors of `extra` {name: array} as they are (ones the params do not hold); `fmt` is the
  file's "format" metadata."""
  tensors = {}
  for name, entries in name_map.entries.items():
    parts = [fn.save(np.asarray(_get_path(params, p))) for p, fn in entries]
    t = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
    tensors[name] = t if dtype is None else t.astype(dtype)
  write_safetensors({**tensors, **(extra or {})}, path, {"format": fmt})


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
