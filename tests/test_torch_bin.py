"""`pytorch_model.bin` checkpoints read without torch (vispec_jax/torch_bin.py).

The files are written here with the real `torch.save` (fp32, fp16, bf16; single and sharded with
`pytorch_model.bin.index.json`) and loaded through `vj.load_target` / `vj.load_draft`, tensor for
tensor against the same weights stored as safetensors. Pickles that ask for anything but tensors
must be refused without running.
"""

import json
import os
import pickle
import shutil
import zipfile

import jax
import ml_dtypes
import numpy as np
import pytest

import vispec_jax as vj
from tests.test_draft import official_config, official_state_dict, write_official
from vispec_jax import checkpoints, torch_bin

torch = pytest.importorskip("torch")

DTYPES = {"float32": (np.float32, torch.float32), "float16": (np.float16, torch.float16),
          "bfloat16": (ml_dtypes.bfloat16, torch.bfloat16)}


def to_torch(a: np.ndarray):
  if a.dtype == ml_dtypes.bfloat16:  # torch.from_numpy knows no ml_dtypes; exact via fp32
    return torch.from_numpy(np.asarray(a, np.float32)).to(torch.bfloat16)
  return torch.from_numpy(np.array(a))


def read_safetensors(folder) -> dict[str, np.ndarray]:
  out = {}
  for path in checkpoints.weight_files(folder):
    f = checkpoints.SafetensorsFile(path)
    out.update({k: np.array(f.get(k)) for k in f.keys()})
  return out


def save_bin(tensors: dict[str, np.ndarray], folder, shards: int = 1) -> str:
  """Writes `tensors` as pytorch_model.bin, or `shards` files + pytorch_model.bin.index.json
  (the layout transformers 4 wrote with safe_serialization=False)."""
  os.makedirs(folder, exist_ok=True)
  sd = {k: to_torch(v) for k, v in tensors.items()}
  if shards == 1:
    torch.save(sd, os.path.join(folder, "pytorch_model.bin"))
    return str(folder)
  names = sorted(sd)
  weight_map = {}
  for i in range(shards):
    file = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
    part = names[i::shards]
    torch.save({k: sd[k] for k in part}, os.path.join(folder, file))
    weight_map.update({k: file for k in part})
  with open(os.path.join(folder, "pytorch_model.bin.index.json"), "w") as f:
    json.dump({"metadata": {"total_size": 0}, "weight_map": weight_map}, f)
  return str(folder)


def copy_without_weights(src, dst) -> str:
  shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.safetensors", "*.index.json"))
  return str(dst)


def assert_same_params(a, b):
  la, lb = jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for (path, x), y in zip(la, lb):
    assert x.dtype == y.dtype, path
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))


# ------------------------------------------------------------------------- the reader


@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_reader_matches_torch(tmp_path, dtype):
  """Views, transposes, shared storages, parameters and empty tensors come back bit-exact."""
  _, tdt = DTYPES[dtype]
  g = torch.Generator().manual_seed(0)
  base = torch.randn(6, 5, generator=g).to(tdt)
  sd = {"plain": base, "transposed": base.t(), "row": base[2], "strided": base[::2, 1::2],
        "param": torch.nn.Parameter(torch.randn(3, generator=g).to(tdt), requires_grad=False),
        "ints": torch.arange(7), "flags": torch.tensor([True, False]),
        "empty": torch.zeros(0, 4, dtype=tdt), "scalar": torch.tensor(2.5).to(tdt)}
  path = str(tmp_path / "x.bin")
  torch.save(sd, path)
  f = torch_bin.TorchBinFile(path)
  assert f.keys() == list(sd)
  for name, t in sd.items():
    got = f.get(name)
    want = t.detach()
    assert got.shape == tuple(want.shape), name
    assert f.header[name]["shape"] == list(want.shape)
    if want.dtype == torch.bfloat16:  # compare bits
      np.testing.assert_array_equal(got.view(np.uint16), want.view(torch.int16).numpy().view(np.uint16))
      assert f.header[name]["dtype"] == "BF16"
    else:
      assert got.dtype == want.numpy().dtype, name
      np.testing.assert_array_equal(got, want.numpy(), err_msg=name)


# ---------------------------------------------------------------- targets and drafts


@pytest.mark.parametrize("dtype, shards", [("float32", 1), ("float16", 1), ("bfloat16", 3)])
def test_target_bin_matches_safetensors(tiny_qwen_dir, tmp_path, dtype, shards):
  """A target folder whose weights are .bin loads the same params as the safetensors folder."""
  np_dtype, _ = DTYPES[dtype]
  tensors = {k: v.astype(np_dtype) for k, v in read_safetensors(tiny_qwen_dir).items()}
  st = copy_without_weights(tiny_qwen_dir, tmp_path / "st")
  checkpoints.write_safetensors(tensors, os.path.join(st, "model.safetensors"))
  binary = save_bin(tensors, copy_without_weights(tiny_qwen_dir, tmp_path / "bin"), shards)
  assert not [p for p in os.listdir(binary) if p.endswith(".safetensors")]
  a, b = vj.load_target(st), vj.load_target(binary)
  assert a.config == b.config
  assert_same_params(a.params, b.params)
  if dtype == "float32":
    assert_same_params(vj.load_target(tiny_qwen_dir).params, b.params)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_draft_bin_matches_safetensors(tmp_path, dtype):
  """A released-layout ViSpec draft shipped as pytorch_model.bin (the reference loader's first
  choice) loads the same params as its safetensors copy."""
  np_dtype, _ = DTYPES[dtype]
  sd = {k: v.astype(np_dtype) for k, v in official_state_dict().items()}
  raw = official_config(num_q=2)
  st = write_official(tmp_path / "st", sd, raw)
  binary = save_bin(sd, tmp_path / "bin")
  shutil.copy(os.path.join(st, "config.json"), binary)
  a, b = vj.load_draft(st), vj.load_draft(binary)
  assert a.config == b.config and a.config.kind == "vispec"
  assert_same_params(a.params, b.params)


def test_transformers_bin_folder(tmp_path):
  """A transformers Qwen2.5-VL state dict written the way transformers 4 wrote
  `save_pretrained(..., safe_serialization=False)` (huggingface_hub's shard split, torch.save per
  shard, pytorch_model.bin.index.json; transformers 5 only writes safetensors) loads exactly like
  the same model's `save_pretrained` safetensors folder."""
  from huggingface_hub import split_torch_state_dict_into_shards
  from tests.parity.hf_reference import build_hf_qwen
  st = tmp_path / "st"
  model = build_hf_qwen(str(st))
  state = model.state_dict()
  split = split_torch_state_dict_into_shards(state, filename_pattern="pytorch_model{suffix}.bin",
                                             max_shard_size="200KB")
  assert split.is_sharded
  binary = copy_without_weights(st, tmp_path / "bin")
  for file, names in split.filename_to_tensors.items():
    torch.save({n: state[n].contiguous() for n in names}, os.path.join(binary, file))
  with open(os.path.join(binary, "pytorch_model.bin.index.json"), "w") as f:
    json.dump({"metadata": split.metadata, "weight_map": split.tensor_to_filename}, f)
  a, b = vj.load_target(str(st)), vj.load_target(binary)
  assert_same_params(a.params, b.params)


def test_safetensors_preferred_over_bin(tiny_qwen_dir, tmp_path):
  folder = shutil.copytree(tiny_qwen_dir, tmp_path / "both")
  (folder / "pytorch_model.bin").write_bytes(b"not read")
  assert checkpoints.weight_files(str(folder)) == [str(folder / "model.safetensors")]
  vj.load_target(str(folder))


# -------------------------------------------------------------------- refused inputs


class _System:
  """A pickle that runs a shell command when unpickled by an unrestricted loader."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return os.system, (f"touch {self.marker}",)


def _zip_pickle(path, payload: bytes):
  """A torch.save-shaped archive around an arbitrary pickle."""
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("archive/data.pkl", payload)
    z.writestr("archive/version", "3\n")


def _edit_pickle(src, dst, edit):
  """Copies a torch.save archive with its data.pkl replaced by edit(data.pkl bytes)."""
  with zipfile.ZipFile(src) as z:
    records = {n: z.read(n) for n in z.namelist()}
  name = next(n for n in records if n.endswith("/data.pkl"))
  records[name] = edit(records[name])
  with zipfile.ZipFile(dst, "w") as z:
    for n, data in records.items():
      z.writestr(n, data)


def _eval_pickle(marker):
  return f"cbuiltins\neval\n(V__import__('os').system('touch {marker}')\ntR.".encode()


@pytest.mark.parametrize("how", ["torch.save", "protocol-0", "nested-in-tensor", "eval"])
def test_malicious_pickle_is_refused_without_running(tmp_path, how):
  marker = tmp_path / "pwned"
  path = str(tmp_path / "evil.bin")
  if how == "torch.save":
    torch.save({"weight": torch.zeros(2), "x": _System(marker)}, path)
  elif how == "protocol-0":
    _zip_pickle(path, pickle.dumps({"x": _System(marker)}, protocol=0))
  elif how == "nested-in-tensor":  # the command hidden in a tensor's backward hooks
    torch.save({"w": torch.zeros(2)}, tmp_path / "good.bin")
    hook = pickle.dumps(_System(marker), protocol=2)[2:-1]  # without PROTO and STOP
    def edit(data):  # after requires_grad (NEWFALSE): push the call, then POP it, unused
      assert b"\x89" in data
      return data.replace(b"\x89", b"\x89" + hook + b"0", 1)
    _edit_pickle(tmp_path / "good.bin", path, edit)
  else:
    _zip_pickle(path, _eval_pickle(marker))
  with pytest.raises(vj.CheckpointError, match=r"evil\.bin: refusing to load.*(system|eval)"):
    torch_bin.TorchBinFile(path)
  assert not marker.exists()


def test_malicious_bin_in_a_target_folder(tiny_qwen_dir, tmp_path):
  folder = copy_without_weights(tiny_qwen_dir, tmp_path / "m")
  marker = tmp_path / "pwned"
  torch.save({"model.norm.weight": _System(marker)}, os.path.join(folder, "pytorch_model.bin"))
  with pytest.raises(vj.CheckpointError, match=r"pytorch_model\.bin: refusing to load.*posix\.system"):
    vj.load_target(folder)
  assert not marker.exists()


@pytest.mark.parametrize("obj, fragment", [
    ({"x": 3}, "entry 'x' is of type int, not a tensor"),
    ({"state_dict": {"w": None}}, "entry 'state_dict' is of type dict"),
    ([1, 2], "holds a list, not a state dict"),
])
def test_non_tensor_contents_refused(tmp_path, obj, fragment):
  path = str(tmp_path / "x.bin")
  if isinstance(obj, dict) and "state_dict" in obj:
    obj = {"state_dict": {"w": torch.zeros(1)}}
  torch.save(obj, path)
  with pytest.raises(vj.CheckpointError, match=fragment):
    torch_bin.TorchBinFile(path)


def test_legacy_truncated_and_out_of_range_files(tmp_path):
  sd = {"w": torch.arange(12, dtype=torch.float32).reshape(3, 4)}
  legacy = str(tmp_path / "legacy.bin")
  torch.save(sd, legacy, _use_new_zipfile_serialization=False)
  with pytest.raises(vj.CheckpointError, match="legacy torch.save format"):
    torch_bin.TorchBinFile(legacy)
  good = tmp_path / "good.bin"
  torch.save(sd, good)
  cut = tmp_path / "cut.bin"
  cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
  with pytest.raises(vj.CheckpointError, match="cut.bin"):
    torch_bin.TorchBinFile(str(cut))
  # a tensor record whose size reaches past its storage must not read other memory
  def grow(pkl):
    assert b"K\x03K\x04\x86" in pkl  # size (3, 4) -> (9, 4)
    return pkl.replace(b"K\x03K\x04\x86", b"K\x09K\x04\x86", 1)
  bad = tmp_path / "past_end.bin"
  _edit_pickle(good, bad, grow)
  with pytest.raises(vj.CheckpointError, match="reads past the end of storage"):
    torch_bin.TorchBinFile(str(bad))


def test_bin_index_errors(tiny_qwen_dir, tmp_path):
  tensors = read_safetensors(tiny_qwen_dir)
  folder = save_bin(tensors, copy_without_weights(tiny_qwen_dir, tmp_path / "m"), shards=2)
  os.remove(os.path.join(folder, "pytorch_model-00002-of-00002.bin"))
  with pytest.raises(vj.CheckpointError, match=r"pytorch_model\.bin\.index\.json are missing"):
    vj.load_target(folder)
