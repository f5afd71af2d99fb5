"""Reading `torch.save` checkpoints (`pytorch_model.bin`) without torch and without running code.

A `torch.save` file (torch >= 1.6) is a zip archive: `<name>/data.pkl`, a pickle of the state
dict, and one record `<name>/data/<key>` per storage (raw bytes, memory-mapped here). The pickle
is read by an unpickler that knows only what rebuilds a tensor (OrderedDict, torch's
`_rebuild_tensor_v2`/`_v3`/`_rebuild_parameter`, storage classes, dtypes), each mapped to a NumPy
stand-in; any other global is refused before anything is called. The legacy pre-1.6 format is
refused with a hint to re-save.
"""

from __future__ import annotations

import collections
import pickle
import struct
import zipfile
import zlib
from typing import Any, NamedTuple

import ml_dtypes
import numpy as np

from vispec_jax.errors import CheckpointError

# torch dtype name -> (NumPy dtype, safetensors dtype name)
DTYPES = {
    "float64": (np.float64, "F64"), "float32": (np.float32, "F32"), "float16": (np.float16, "F16"),
    "bfloat16": (ml_dtypes.bfloat16, "BF16"), "int64": (np.int64, "I64"),
    "int32": (np.int32, "I32"), "int16": (np.int16, "I16"), "int8": (np.int8, "I8"),
    "uint8": (np.uint8, "U8"), "bool": (np.bool_, "BOOL"), "uint16": (np.uint16, "U16"),
    "uint32": (np.uint32, "U32"), "uint64": (np.uint64, "U64"),
    "float8_e4m3fn": (ml_dtypes.float8_e4m3fn, "F8_E4M3"),
    "float8_e5m2": (ml_dtypes.float8_e5m2, "F8_E5M2"),
}
_ST_NAMES = {np.dtype(d): st for d, st in DTYPES.values()}
_STORAGES = {  # typed storage class -> torch dtype name
    "DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8", "BoolStorage": "bool",
}


class _StorageType(NamedTuple):  # what `torch.FloatStorage` etc. unpickle to
  name: str
  dtype: Any  # None for UntypedStorage (bytes)


class _Dtype(NamedTuple):  # what `torch.float8_e4m3fn` etc. unpickle to
  name: str
  dtype: Any


class _Storage(NamedTuple):
  key: str
  data: np.ndarray  # 1-D, the storage's dtype (uint8 for an untyped storage)


def _is_int(x) -> bool:
  return isinstance(x, int) and not isinstance(x, bool)


class _Unpickler(pickle.Unpickler):
  """Rebuilds tensors as NumPy views of the archive's records; refuses every other global."""

  def __init__(self, file, path: str, zf: zipfile.ZipFile, prefix: str, mm: np.ndarray):
    super().__init__(file)
    self._path, self._zf, self._prefix, self._mm, self._storages = path, zf, prefix, mm, {}

  def _refuse(self, what: str):
    raise CheckpointError(f"{self._path}: refusing to load: the pickle asks for {what}, which is "
                          "not part of a tensor state dict (only tensors are read from .bin "
                          "files; no code in them is run)")

  def find_class(self, module: str, name: str):
    if (module, name) == ("collections", "OrderedDict"):
      return collections.OrderedDict
    if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor_v3",
                                             "_rebuild_parameter"):
      return getattr(self, name)
    if module == "torch" and name in _STORAGES:
      return _StorageType(name, np.dtype(DTYPES[_STORAGES[name]][0]))
    if (module, name) in (("torch.storage", "UntypedStorage"), ("torch", "UntypedStorage")):
      return _StorageType(name, None)
    if module == "torch" and name in DTYPES:
      return _Dtype(name, np.dtype(DTYPES[name][0]))
    self._refuse(f"the global {module}.{name}")

  def _record(self, key: str) -> np.ndarray:
    """The bytes of record `data/<key>`: a view of the memory-mapped file when stored
    uncompressed (as torch writes it), else a copy."""
    try:
      info = self._zf.getinfo(f"{self._prefix}data/{key}")
    except KeyError:
      raise CheckpointError(f"{self._path}: storage record data/{key} is missing from the "
                            "archive") from None
    if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
      return np.frombuffer(self._zf.read(info), np.uint8)
    start, mm = info.header_offset, self._mm
    local = bytes(mm[start:start + 30])
    if len(local) < 30 or local[:4] != b"PK\x03\x04":
      raise CheckpointError(f"{self._path}: corrupt zip entry for storage data/{key}")
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    begin = start + 30 + name_len + extra_len
    if begin + info.file_size > mm.size:
      raise CheckpointError(f"{self._path}: truncated file: storage data/{key} needs bytes up to "
                            f"{begin + info.file_size}, file has {mm.size}")
    return mm[begin:begin + info.file_size]

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
            and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)):
      self._refuse(f"the persistent object {pid!r:.100}")
    _, kind, key, _location, _numel = pid
    if key not in self._storages:
      raw, dtype = self._record(key), kind.dtype or np.dtype(np.uint8)
      self._storages[key] = _Storage(key, raw[:raw.size - raw.size % dtype.itemsize].view(dtype))
    return self._storages[key]

  def _tensor(self, storage, offset, size, stride, dtype=None) -> np.ndarray:
    if not isinstance(storage, _Storage):
      self._refuse(f"a tensor built from {type(storage).__name__}")
    ok = (_is_int(offset) and offset >= 0 and isinstance(size, tuple) and isinstance(stride, tuple)
          and len(size) == len(stride) and all(_is_int(v) and v >= 0 for v in size + stride))
    if not ok:
      raise CheckpointError(f"{self._path}: corrupt tensor record (storage {storage.key}: offset "
                            f"{offset!r}, size {size!r}, stride {stride!r})")
    data = storage.data
    if dtype is not None:  # v3: an untyped (byte) storage and an explicit dtype
      if data.dtype != np.uint8:
        raise CheckpointError(f"{self._path}: storage {storage.key} is typed but the tensor "
                              f"names the dtype {dtype}")
      data = data[:data.size - data.size % dtype.itemsize].view(dtype)
    end = offset + (0 if 0 in size else 1 + sum((n - 1) * s for n, s in zip(size, stride)))
    if end > data.size:
      raise CheckpointError(f"{self._path}: tensor of size {size} at offset {offset} reads past "
                            f"the end of storage {storage.key} ({data.size} elements)")
    return np.lib.stride_tricks.as_strided(data[offset:], shape=size, writeable=False,
                                           strides=[s * data.dtype.itemsize for s in stride])

  def _rebuild_tensor_v2(self, storage, offset, size, stride, requires_grad=False,
                         backward_hooks=None, metadata=None):
    return self._tensor(storage, offset, size, stride)

  def _rebuild_tensor_v3(self, storage, offset, size, stride, requires_grad, backward_hooks,
                         dtype, metadata=None):
    if not isinstance(dtype, _Dtype):
      self._refuse(f"a tensor of dtype {dtype!r:.100}")
    return self._tensor(storage, offset, size, stride, dtype.dtype)

  def _rebuild_parameter(self, data, requires_grad=False, backward_hooks=None):
    if not isinstance(data, np.ndarray):
      self._refuse(f"a parameter of {type(data).__name__}")
    return data


class TorchBinFile:
  """A `torch.save` state dict, memory-mapped, with `checkpoints.SafetensorsFile`'s interface:
  `keys()`, `get(name)` (a read-only NumPy view), `header` {name: {"dtype", "shape"}}.
  The file must hold a flat {name: tensor} dict, as `state_dict()` gives."""

  def __init__(self, path: str):
    self.path = path
    if not zipfile.is_zipfile(path):
      with open(path, "rb") as f:
        start = f.read(2)
      hint = (" It looks like the legacy torch.save format (torch < 1.6 or "
              "_use_new_zipfile_serialization=False), which is not supported: re-save it with a "
              "current torch, or convert it to safetensors." if start[:1] == b"\x80" else "")
      raise CheckpointError(f"{path}: not a torch.save zip archive (truncated or corrupt).{hint}")
    try:
      self._tensors = self._read(path)
    except CheckpointError:
      raise
    except (zipfile.BadZipFile, pickle.UnpicklingError, EOFError, ValueError, TypeError,
            AttributeError, IndexError, KeyError, struct.error, OSError, RecursionError,
            OverflowError, RuntimeError, NotImplementedError, zlib.error) as e:
      # RuntimeError: an encrypted entry; NotImplementedError: an unknown compression method
      raise CheckpointError(f"{path}: corrupt torch.save archive ({type(e).__name__}: {e})") from None
    self.header = {k: {"dtype": _ST_NAMES[v.dtype], "shape": list(v.shape)}
                   for k, v in self._tensors.items()}

  @staticmethod
  def _read(path: str) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(path) as zf:
      pickles = [n for n in zf.namelist() if n.endswith("data.pkl") and n.count("/") <= 1]
      if len(pickles) != 1:
        raise CheckpointError(f"{path}: expected one data.pkl in the torch.save archive, "
                              f"found {len(pickles)}")
      prefix = pickles[0][:-len("data.pkl")]
      big = (f"{prefix}byteorder" in zf.namelist()
             and zf.read(f"{prefix}byteorder").strip() == b"big")
      with zf.open(pickles[0]) as f:
        obj = _Unpickler(f, path, zf, prefix, np.memmap(path, dtype=np.uint8, mode="r")).load()
    if not isinstance(obj, dict):
      raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict of tensors")
    for k, v in obj.items():
      if not isinstance(k, str) or not isinstance(v, np.ndarray):
        raise CheckpointError(f"{path}: entry {k!r:.80} is of type {type(v).__name__}, not a tensor "
                              "(expected a flat state dict {name: tensor})")
    if big:  # swap each element's bytes (works for ml_dtypes' bf16/fp8 too)
      obj = {k: np.ascontiguousarray(v).view(f"u{v.dtype.itemsize}").byteswap().view(v.dtype)
             for k, v in obj.items()}
    return dict(obj)

  def keys(self) -> list[str]:
    return list(self._tensors)

  def get(self, name: str) -> np.ndarray:
    return self._tensors[name]
