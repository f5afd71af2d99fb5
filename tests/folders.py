"""Editing copies of checkpoint folders, for the loaders' error tests."""

import json
import os
import shutil

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
