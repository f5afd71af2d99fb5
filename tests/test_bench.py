"""`python -m infer.bench spec|pieces` wiring on a tiny model (numbers are not checked: timings
belong in docs/benchmarks.md, never in tests). `spec` exits non-zero if any speculative output
differs from vanilla, so these runs also check losslessness, including on a sharded mesh."""

import json
import os
import subprocess
import sys

import pytest

from vispec_jax import testing

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def bench(*args, devices=1):
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
  return subprocess.run([sys.executable, "-m", "infer.bench", *map(str, args)], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
  return testing.make_tiny_qwen(str(tmp_path_factory.mktemp("bench_tiny_qwen")))


@pytest.mark.slow
@pytest.mark.parametrize("mesh", [None, "data=2,tensor=4"])
def test_spec(model, tmp_path, mesh):
  out = tmp_path / "rows.json"
  args = ["spec", "--folder", model, "--new-tokens", 9, "--repeats", 1, "--batch", 2,
          "--trees", "chain4", "dynamic-d4k4t16", "--json", out]
  r = bench(*args, *(["--mesh", mesh] if mesh else []), devices=8 if mesh else 1)
  assert r.returncode == 0, r.stdout + r.stderr
  rows = json.loads(out.read_text())
  assert len(rows) == 4 and all(row["identical"] for row in rows)
  oracle = {row["tree"]: row["tau"] for row in rows if row["drafter"] == "oracle"}
  assert oracle["chain4"] >= 3.0  # 9 tokens = root + two rounds of 4; the last is cut short


def test_pieces(model, tmp_path):
  out = tmp_path / "pieces.json"
  r = bench("pieces", "--folder", model, "--iters", 2, "--repeats", 1, "--json", out)
  assert r.returncode == 0, r.stdout + r.stderr
  rows = {row["piece"]: row for row in json.loads(out.read_text())}
  assert rows["target t=1"]["x_step"] == 1.0
  assert {"target t=30", "lm_head t=5", "draft t=1", "compact"} <= set(rows)
  assert all(row["ms"] > 0 for row in rows.values())


def test_cost(tmp_path):
  out = tmp_path / "cost.json"
  r = bench("cost", "--devices", "h100", "--tau", 1, 3, "--json", out)
  assert r.returncode == 0, r.stdout + r.stderr
  rows = json.loads(out.read_text())
  assert len(rows) == 2 * 2 * 2  # targets x trees x tau
  for target in ("bench-61M", "qwen2.5-vl-7b"):
    by_tau = {row["tau"]: row["speedup"] for row in rows
              if row["target"] == target and row["tree"] == "chain4"}
    assert by_tau[3.0] > by_tau[1.0] > 0
