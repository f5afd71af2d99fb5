"""Editing copies of checkpoint folders, and broken files, for the loaders' error tests."""

import json
import os
import shutil
import struct
import zlib

import numpy as np

from vispec_jax import checkpoints


def copy_folder(src, dst) -> str:
  shutil.copytree(src, dst)
  return str(dst)


def rewrite_tensors(folder, edit):
  """Applies edit(dict name -> array) to the folder's model.safetensors, in place."""
  path = os.path.join(folder, "model.safetensors")
  f = checkpoints.SafetensorsFile(path)
  tensors = {k: np.array(f.get(k)) for k in f.keys()}
  del f
  edit(tensors)
  checkpoints.write_safetensors(tensors, path)


def edit_config(folder, edit):
  """Applies edit(dict) to the folder's config.json, in place."""
  path = os.path.join(folder, "config.json")
  with open(path) as f:
    raw = json.load(f)
  edit(raw)
  with open(path, "w") as f:
    json.dump(raw, f)


def png_header_only(path, width: int, height: int) -> None:
  """Writes a PNG whose header claims width x height but whose data is cut short: a huge or
  zero-size image for tests, without the memory a real one would take."""
  def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
  ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
  with open(path, "wb") as f:
    f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"x"))
