"""Checkpoint loading: round trip and one clear error per way a folder can be wrong."""

import json
import os

import numpy as np
import pytest

import vispec_jax as vj
from tests.folders import copy_folder, edit_config, rewrite_tensors
from vispec_jax import checkpoints


def test_round_trip_is_exact(tiny_qwen_dir, tmp_path):
  target = vj.load_target(tiny_qwen_dir)
  out = str(tmp_path / "model.safetensors")
  checkpoints.save_hf(target.params, target.family.name_map(target.config), out)
  a, b = checkpoints.SafetensorsFile(os.path.join(tiny_qwen_dir, "model.safetensors")), checkpoints.SafetensorsFile(out)
  assert sorted(a.keys()) == sorted(b.keys())
  for k in a.keys():
    np.testing.assert_array_equal(a.get(k), b.get(k), err_msg=k)


def test_old_key_spelling_loads(tiny_qwen_dir, tmp_path):
  """transformers-5 module names (model.language_model.*, model.visual.*) load the same."""
  folder = copy_folder(tiny_qwen_dir, tmp_path / "m")
  def rename(t):
    for k in list(t):
      if k.startswith("model."):
        t["model.language_model." + k[len("model."):]] = t.pop(k)
      elif k.startswith("visual."):
        t["model." + k] = t.pop(k)
  rewrite_tensors(folder, rename)
  a, b = vj.load_target(tiny_qwen_dir), vj.load_target(folder)
  for x, y in zip(*(jax_leaves(t.params) for t in (a, b))):
    np.testing.assert_array_equal(x, y)


def jax_leaves(tree):
  import jax
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_folder_missing(tmp_path):
  with pytest.raises(vj.CheckpointError, match="not found"):
    vj.load_target(str(tmp_path / "nope"))


def test_no_config(tmp_path):
  with pytest.raises(vj.CheckpointError, match="no config.json"):
    vj.load_target(str(tmp_path))


def test_no_weights(tiny_qwen_dir, tmp_path):
  folder = copy_folder(tiny_qwen_dir, tmp_path / "m")
  os.remove(os.path.join(folder, "model.safetensors"))
  with pytest.raises(vj.CheckpointError, match="no weights"):
    vj.load_target(folder)


def test_unknown_architecture(tiny_qwen_dir, tmp_path):
  folder = copy_folder(tiny_qwen_dir, tmp_path / "m")
  with open(os.path.join(folder, "config.json"), "w") as f:
    json.dump({"model_type": "mamba", "architectures": ["MambaForCausalLM"]}, f)
  with pytest.raises(vj.ConfigError, match="unknown architecture.*mamba"):
    vj.load_target(folder)


def test_unknown_config_keys_are_ignored(tiny_qwen_dir, tmp_path):
  """Keys we do not read (top level, text_config, vision_config) change nothing, as in
  transformers."""
  folder = copy_folder(tiny_qwen_dir, tmp_path / "m")
  path = os.path.join(folder, "config.json")
  with open(path) as f:
    raw = json.load(f)
  raw.update(some_future_option=True, quantization_hint={"bits": 4})
  raw["text_config"]["layer_types"] = ["full_attention"] * 2
  raw["vision_config"]["unused_flag"] = 1
  with open(path, "w") as f:
    json.dump(raw, f)
  assert vj.load_target(folder).config == vj.load_target(tiny_qwen_dir).config


@pytest.mark.parametrize("where", ["rope_scaling", "rope_parameters"])
def test_scaled_rope_is_refused(tiny_qwen_dir, tmp_path, where):
  """A RoPE variant we do not implement must not load silently (its logits would be wrong)."""
  folder = copy_folder(tiny_qwen_dir, tmp_path / "m")
  edit_config(folder, lambda raw: raw["text_config"].update(
      {where: {"rope_type": "yarn", "factor": 4.0, "mrope_section": [2, 3, 3]}}))
  with pytest.raises(vj.ConfigError, match="rope type 'yarn' is not supported"):
    vj.load_target(folder)


def test_missing_tensor_is_named(tiny_qwen_dir, tmp_path):
  folder = copy_folder(tiny_qwen_dir, tmp_path / "m")
  rewrite_tensors(folder, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
  with pytest.raises(vj.CheckpointError, match=r"missing tensors: \['model.layers.1.mlp.up_proj.weight'\]"):
    vj.load_target(folder)


def test_unexpected_tensor_is_named(tiny_qwen_dir, tmp_path):
  folder = copy_folder(tiny_qwen_dir, tmp_path / "m")
  rewrite_tensors(folder, lambda t: t.update({"model.layers.9.extra.weight": np.zeros(3, np.float32)}))
  with pytest.raises(vj.CheckpointError, match=r"unexpected tensors: \['model.layers.9.extra.weight'\]"):
    vj.load_target(folder)


def test_shape_mismatch_names_tensor_and_shapes(tiny_qwen_dir, tmp_path):
  folder = copy_folder(tiny_qwen_dir, tmp_path / "m")
  def shrink(t):
    t["model.norm.weight"] = t["model.norm.weight"][:10]
  rewrite_tensors(folder, shrink)
  with pytest.raises(vj.CheckpointError, match=r"model.norm.weight.*\(10,\).*\(64,\)"):
    vj.load_target(folder)


def test_truncated_file(tiny_qwen_dir, tmp_path):
  folder = copy_folder(tiny_qwen_dir, tmp_path / "m")
  path = os.path.join(folder, "model.safetensors")
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)
  with pytest.raises(vj.CheckpointError, match="truncated"):
    vj.load_target(folder)


def test_missing_shard(tiny_qwen_dir, tmp_path):
  folder = copy_folder(tiny_qwen_dir, tmp_path / "m")
  with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
    json.dump({"weight_map": {"a": "model-00001-of-00002.safetensors"}}, f)
  with pytest.raises(vj.CheckpointError, match="missing"):
    vj.load_target(folder)


def test_bad_config_json(tiny_qwen_dir, tmp_path):
  folder = copy_folder(tiny_qwen_dir, tmp_path / "m")
  with open(os.path.join(folder, "config.json"), "w") as f:
    f.write("{not json")
  with pytest.raises(vj.CheckpointError, match="not valid JSON"):
    vj.load_target(folder)
