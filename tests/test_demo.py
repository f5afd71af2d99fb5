"""`python -m infer.demo` on a tiny random target and a random ViSpec draft: the JSON report,
the identity check and the PNG (the shipped models' numbers are in docs/benchmarks.md)."""

import json
import os
import shutil
import subprocess
import sys

import jax
import pytest
from PIL import Image

import vispec_jax as vj
from vispec_jax import draft
from proj.scenes import generator as scenes, target_folder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def demo(*args):
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  return subprocess.run([sys.executable, "-m", "infer.demo", *map(str, args)], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def draft_dir(tiny_qwen_dir, tmp_path_factory):
  target = vj.load_target(tiny_qwen_dir)
  cfg = draft.DraftConfig.for_target(target.config.text, "vispec")
  return vj.save_draft(str(tmp_path_factory.mktemp("demo_draft")), cfg,
                       draft.init_params(cfg, jax.random.PRNGKey(3)))


def test_json_report_and_png(tiny_qwen_dir, draft_dir, tmp_path):
  png = tmp_path / "demo.png"
  r = demo("--model", tiny_qwen_dir, "--draft", draft_dir, "--max-new-tokens", 12, "--tree",
           "chain4", "--seed", 5, "--style", "bold", "--out", png, "--json")
  assert r.returncode == 0, r.stderr
  out = json.loads(r.stdout)
  assert out["identical"] is True
  assert 1 <= out["tokens"] <= 12  # EOS may come first
  assert out["tokens_per_forward"] == pytest.approx(out["tau"] + 1)
  assert out["speedup"] > 0 and out["target_forwards"] >= 1
  assert out["seed"] == 5 and out["style"] == "bold"
  assert out["question"] == scenes.sample(5, style="bold")["question"]
  assert 0 <= out["facts_correct"] <= out["facts_stated"]  # scene_facts on the answer
  assert out["facts_verdict"].startswith(f"facts: {out['facts_correct']} of {out['facts_stated']}")
  with Image.open(png) as im:
    assert im.width > 224 and im.height >= 224


def test_style_defaults_to_the_targets_manifest(tiny_qwen_dir, draft_dir, tmp_path):
  """A target folder's scenes.json names the scenes it was trained on: the demo draws those."""
  assert target_folder.recorded_style(tiny_qwen_dir) == scenes.DEFAULT_STYLE  # no manifest
  model = str(tmp_path / "model")
  shutil.copytree(tiny_qwen_dir, model)
  with open(os.path.join(model, target_folder.MANIFEST), "w") as f:
    json.dump({"stage": 2, "style": "bold"}, f)
  assert target_folder.recorded_style(model) == "bold" != scenes.DEFAULT_STYLE
  r = demo("--model", model, "--draft", draft_dir, "--max-new-tokens", 4, "--seed", 5, "--out", "",
           "--json")
  assert r.returncode == 0, r.stderr
  out = json.loads(r.stdout)
  assert out["style"] == "bold" and out["question"] == scenes.sample(5, style="bold")["question"]
  with open(os.path.join(model, target_folder.MANIFEST), "w") as f:
    json.dump({"style": "pastel"}, f)
  with pytest.raises(ValueError, match="unknown scene style 'pastel'"):
    target_folder.recorded_style(model)


def test_missing_models_is_one_line(tmp_path):
  r = demo("--model", tmp_path / "nope", "--draft", tmp_path / "nope2")
  assert r.returncode == 2
  assert r.stderr.strip().startswith("error: --model folder not found")
  assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_bad_options_are_one_line(tiny_qwen_dir, draft_dir):
  for args, message in ((["--max-new-tokens", 0], "--max-new-tokens"), (["--kind", "x"], "--kind"),
                        (["--style", "x"], "--style"),
                        (["--tree", "bushy"], "unknown tree 'bushy'")):
    r = demo("--model", tiny_qwen_dir, "--draft", draft_dir, *args)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
