"""Sharded inference on 8 fake CPU devices: same tokens as one device, params really sharded."""

import json
import os
import subprocess
import sys

import pytest

from vispec_jax import testing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


MESHES = ["data=1,tensor=8", "data=2,tensor=4", "data=8,tensor=1"]


def _run(folder, meshes):
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "sharding_worker.py"), folder, *meshes],
                        capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def runs(tiny_qwen_dir):
  """One subprocess (one JAX start-up) runs the unsharded reference and every mesh."""
  return _run(tiny_qwen_dir, ["none"] + MESHES)


@pytest.mark.slow
@pytest.mark.parametrize("mesh,q_shard,up_shard,cache_shard", [
    # 4 heads do not split 8 ways: replicated; the 2 kv heads split only 2 ways or not at all
    ("data=1,tensor=8", [64, 64], [64, 16], [8, 2, 32, 16]),
    ("data=2,tensor=4", [64, 16], [64, 32], [4, 2, 32, 16]),
    ("data=8,tensor=1", [64, 64], [64, 128], [1, 2, 32, 16]),
])
def test_mesh_gives_identical_tokens(runs, mesh, q_shard, up_shard, cache_shard):
  reference, out = runs["none"], runs[mesh]
  assert out["devices"] == 8
  assert out["vanilla"] == reference["vanilla"]
  assert out["spec"] == reference["spec"]
  assert out["spec"] == out["vanilla"]
  assert out["shards"]["q_kernel"] == q_shard
  assert out["shards"]["mlp_up"] == up_shard
  assert out["shards"]["kv_cache"] == cache_shard  # [B, K, S, D] per device
  assert reference["shards"]["kv_cache"] == [8, 2, 32, 16]


@pytest.mark.slow
def test_llava_mesh_gives_identical_tokens(tmp_path_factory):
  folder = testing.make_tiny_llava(str(tmp_path_factory.mktemp("llava")))
  runs = _run(folder, ["none", "data=2,tensor=4"])
  assert runs["data=2,tensor=4"]["vanilla"] == runs["none"]["vanilla"]
  assert runs["data=2,tensor=4"]["spec"] == runs["none"]["spec"] == runs["none"]["vanilla"]
  assert runs["data=2,tensor=4"]["shards"]["mlp_up"] != runs["none"]["shards"]["mlp_up"]


@pytest.mark.slow
def test_cli_mesh_gives_the_same_answer(tiny_qwen_dir):
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
  def answer(*extra):
    proc = subprocess.run(
        [sys.executable, "-m", "infer.generate", "--model", tiny_qwen_dir, "--prompt",
         "Describe the image.", "--max-new-tokens", "8", "--json", *extra],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])["tokens"]
  assert answer("--mesh", "data=2,tensor=4") == answer()
