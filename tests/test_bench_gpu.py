"""`python -m infer.bench gpu --tiny`: the accelerator benchmark's code path at tiny sizes on CPU,
run with grain, TFDS and ml_collections made unimportable (the GPU machine lacks them). Numbers
are not checked (timings belong in docs/benchmarks.md), the structure and losslessness are."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
BLOCKED = ("grain", "tensorflow_datasets", "ml_collections")

# Any import of a blocked package (at any depth) fails, as on a machine without it.
RUNNER = f"""
import sys
class Block:
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in {BLOCKED!r}:
      raise ImportError("blocked for this test: " + name)
sys.meta_path.insert(0, Block())
from infer import bench
sys.exit(bench.main(sys.argv[1:]))
"""


def gpu_bench(*args):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": FAST_COMPILE}
  return subprocess.run([sys.executable, "-c", RUNNER, "gpu", *map(str, args)], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=900)


def test_blocker_blocks():
  code = RUNNER.replace("from infer import bench\nsys.exit(bench.main(sys.argv[1:]))",
                        "import ml_collections")
  r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
  assert r.returncode != 0 and "blocked for this test: ml_collections" in r.stderr


def test_gpu_tiny(tmp_path):
  out = tmp_path / "gpu"
  r = gpu_bench("--tiny", "--out", out)
  assert r.returncode == 0, r.stdout + r.stderr
  result = json.loads((out / "results.json").read_text())
  setup = result["setup"]
  assert setup["jax"] and setup["device_kind"] and setup["dtype"] == "bfloat16"
  assert not result["stopped"]
  rows = result["rows"]
  assert {(row["model"], row["batch"], row["tree"], row["draft"]) for row in rows} == {
      ("qwen2.5-vl-7b", 2, "chain4", "oracle"), ("qwen2.5-vl-7b", 2, "dynamic", "random"),
      ("bench-61M", 1, "chain4", "random")}
  for row in rows:
    assert row["identical"] is True
    assert row["vanilla_tok_s"] > 0 and row["spec_tok_s"] > 0 and row["speedup"] > 0
  oracle = next(row for row in rows if row["draft"] == "oracle")
  assert oracle["tau"] >= 2.0  # 12 tokens = root + rounds of 4 (the last cut short)
  md = (out / "results.md").read_text()
  assert "| model | batch | tree | draft | tokens/s vanilla | tokens/s spec |" in md
  assert md.count("| qwen2.5-vl-7b |") == 2 and md.count("| bench-61M |") == 1
  assert r.stdout.count(" s] ") == 3  # one progress line per row


def test_gpu_budget_spent_still_writes(tmp_path):
  out = tmp_path / "gpu"
  r = gpu_bench("--tiny", "--budget-s", 0, "--out", out)
  assert r.returncode == 0, r.stdout + r.stderr
  result = json.loads((out / "results.json").read_text())
  assert result["stopped"] is True and result["rows"] == []
  assert "budget spent" in r.stdout and "budget spent" in (out / "results.md").read_text()


def test_gpu_bad_options(tmp_path):
  (tmp_path / "file").write_text("x")
  for args, message in ((["--out", tmp_path / "file"], "is a file, not a folder"),
                        (["--out", tmp_path / "o", "--repeats", 0], "--repeats must be")):
    r = gpu_bench("--tiny", *args)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and message in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
