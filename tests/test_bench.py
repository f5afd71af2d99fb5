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


def test_cost(tmp_path, tiny_qwen_dir):
  out = tmp_path / "cost.json"
  r = bench("cost", "--devices", "h100", "--tau", 1, 3, "--target", tiny_qwen_dir, "--json", out)
  assert r.returncode == 0, r.stdout + r.stderr
  rows = json.loads(out.read_text())
  assert len(rows) == 3 * 2 * 2  # targets x trees x tau
  for target in ("bench-61M", "qwen2.5-vl-7b", os.path.basename(tiny_qwen_dir)):
    by_tau = {row["tau"]: row["speedup"] for row in rows
              if row["target"] == target and row["tree"] == "chain4"}
    assert by_tau[3.0] > by_tau[1.0] > 0


# ------------------------------------------------------------------ table and length (trained
# drafts on held-out scenes; here random drafts on the tiny target: structure only, no numbers)

FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def bench_fast(*args):
  """`bench` with XLA's cheapest CPU compile (these tests compile several loops; timings are
  not checked)."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": FAST_COMPILE}
  return subprocess.run([sys.executable, "-m", "infer.bench", *map(str, args)], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def draft_dirs(tiny_qwen_dir, tmp_path_factory):
  import jax
  import vispec_jax as vj
  from vispec_jax import draft
  target = vj.load_target(tiny_qwen_dir)
  out = {}
  for kind, seed in (("eagle", 3), ("medusa", 4)):
    cfg = draft.DraftConfig.for_target(target.config.text, kind)
    out[kind] = vj.save_draft(str(tmp_path_factory.mktemp(f"bench_{kind}")), cfg,
                              draft.init_params(cfg, jax.random.PRNGKey(seed)))
  return out


def test_table(tiny_qwen_dir, draft_dirs, tmp_path):
  out = tmp_path / "table.json"
  r = bench_fast("table", "--target", tiny_qwen_dir, "--draft", f"eagle={draft_dirs['eagle']}",
                 "--scenes", 2, "--max-new-tokens", 12, "--temperatures", 0, 1, "--tree",
                 "chain3", "--style", "bold", "--markdown", "--json", out)
  assert r.returncode == 0, r.stdout + r.stderr
  result = json.loads(out.read_text())
  assert result["setup"]["seeds"] == [200_000_000, 200_000_001]  # the held-out test split
  assert result["setup"]["style"] == "bold"
  rows = {(row["name"], row["temperature"]): row for row in result["rows"]}
  assert set(rows) == {(n, t) for n in ("vanilla", "eagle") for t in (0.0, 1.0)}
  for (name, t), row in rows.items():
    assert row["tau"] >= 0 and row["speedup"] > 0 and row["tokens_per_s"] > 0
    assert row["tokens_per_forward"] == pytest.approx(row["tau"] + 1)
    assert 2 <= row["tokens"] <= 2 * 12
    assert row["identical"] is (True if t == 0 else None)  # sampling: never claimed
  assert rows[("vanilla", 0.0)]["speedup"] == 1.0
  assert "| eagle" in r.stdout and "|--" in r.stdout  # the markdown table


def test_length(tiny_qwen_dir, draft_dirs, tmp_path):
  from PIL import Image
  png, out = tmp_path / "length.png", tmp_path / "length.json"
  r = bench_fast("length", "--target", tiny_qwen_dir, "--draft", f"medusa={draft_dirs['medusa']}",
                 "--scenes", 1, "--lengths", 8, 16, "--tree", "chain3", "--out", png,
                 "--json", out)
  assert r.returncode == 0, r.stdout + r.stderr
  rows = json.loads(out.read_text())["rows"]
  assert sorted((row["name"], row["max_new_tokens"]) for row in rows) == [
      ("medusa", 8), ("medusa", 16)]
  assert all(row["identical"] is True and row["speedup"] > 0 and row["tau"] >= 0 for row in rows)
  with Image.open(png) as im:
    im.verify()
  with Image.open(png) as im:
    assert im.format == "PNG" and im.width > 400 and im.height > 200


def test_table_bad_input_is_one_line(tiny_qwen_dir, draft_dirs, tmp_path, capsys):
  from infer import bench as bench_main
  cases = [
      (["--draft", f"eagle={tmp_path / 'nope'}"], "--draft eagle folder not found"),
      (["--draft", draft_dirs["eagle"]], "--draft must be NAME=DIR"),
      (["--draft", f"e={draft_dirs['eagle']}", "--tree", "bushy"], "--tree: unknown tree 'bushy'"),
      (["--draft", f"m={draft_dirs['medusa']}", "--tree", "chain6"], "5 Medusa heads"),
  ]
  for args, message in cases:
    rc = bench_main.main(["table", "--target", tiny_qwen_dir, "--scenes", "1", *args])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_batch(tiny_qwen_dir, draft_dirs, tmp_path):
  out = tmp_path / "batch.json"
  r = bench_fast("batch", "--target", tiny_qwen_dir, "--draft", draft_dirs["eagle"], "--batch", 1,
                 2, "--new-tokens", 8, "--tree", "chain3", "--repeats", 1, "--markdown",
                 "--json", out)
  assert r.returncode == 0, r.stdout + r.stderr
  result = json.loads(out.read_text())
  assert result["draft_kind"] == "eagle" and result["split"] == "test"
  rows = result["rows"]
  assert [(row["batch"], row["new_tokens"]) for row in rows] == [(1, 8), (2, 8)]
  for row in rows:
    assert row["identical"] is True and row["tokens_spec"] == row["tokens_vanilla"]
    assert row["batch"] <= row["tokens_vanilla"] <= row["batch"] * 8  # EOS may end rows early
    assert row["vanilla_tok_s"] > 0 and row["spec_tok_s"] > 0 and row["tau"] >= 0
    assert row["speedup"] == pytest.approx(row["spec_tok_s"] / row["vanilla_tok_s"])
  assert "| vanilla tokens/s | speculative tokens/s | speedup | tau |" in r.stdout
  assert r.stdout.count("| 2 | 8 |") == 1


def test_batch_bad_options(tiny_qwen_dir, tmp_path, capsys):
  from infer import bench as bench_main
  cases = [(["--batch", "0"], "--batch must be"), (["--draft", str(tmp_path / "nope")],
                                                   "--draft folder not found"),
           (["--tree", "bushy"], "--tree: unknown tree 'bushy'")]
  for args, message in cases:
    rc = bench_main.main(["batch", "--target", tiny_qwen_dir, "--draft", str(tmp_path), *args])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and message in err, err
    assert len(err.strip().splitlines()) == 1
