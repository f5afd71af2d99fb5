"""`python -m infer.generate`, run as a subprocess: the happy paths and one clean error line
(exit status 2, no traceback) for every kind of bad input."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from vispec_jax import testing
from tests.folders import png_header_only

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_NEW = 4


def cli(*args, timeout=300):
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  return subprocess.run([sys.executable, "-m", "infer.generate", *map(str, args)], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
  return testing.make_tiny_qwen(str(tmp_path_factory.mktemp("cli_tiny_qwen")))


@pytest.fixture(scope="module")
def image(tmp_path_factory):
  path = tmp_path_factory.mktemp("cli_images") / "scene.png"
  testing.scene_image().save(path)
  return str(path)


def test_image_json(model, image):
  r = cli("--model", model, "--image", image, "--prompt", "What colour is the square?",
          "--max-new-tokens", MAX_NEW, "--json")
  assert r.returncode == 0, r.stderr
  out = json.loads(r.stdout)
  assert set(out) == {"answer", "tokens", "num_tokens", "prompt_tokens", "seconds",
                      "tokens_per_second"}
  assert 0 < out["num_tokens"] <= MAX_NEW == 4
  assert len(out["tokens"]) == out["num_tokens"]
  assert out["prompt_tokens"] > 10 and out["seconds"] > 0 and isinstance(out["answer"], str)


def test_video_plain_output(model, tmp_path):
  frames = tmp_path / "clip"
  frames.mkdir()
  for i in range(3):
    testing.scene_image(seed=i).save(frames / f"frame_{i}.png")
  gif = tmp_path / "clip.gif"  # a second video: the frames of an animated GIF
  pictures = [testing.scene_image(seed=i) for i in range(4)]
  pictures[0].save(gif, save_all=True, append_images=pictures[1:], duration=100)
  r = cli("--model", model, "--video", frames, "--video", gif, "--prompt", "What happens?",
          "--max-new-tokens", MAX_NEW, "--temperature", 0.7, "--top-k", 20, "--top-p", 0.9)
  assert r.returncode == 0, r.stderr
  assert r.stdout.endswith("\n") and "Traceback" not in r.stderr


def test_tiny_quick_start():
  r = cli("--tiny", "--prompt", "Describe the image.", "--max-new-tokens", MAX_NEW, "--json")
  assert r.returncode == 0, r.stderr
  assert "random" in r.stderr and "Traceback" not in r.stderr
  assert 0 < json.loads(r.stdout)["num_tokens"] <= MAX_NEW


def _copy(model, tmp_path):
  return shutil.copytree(model, tmp_path / "ckpt")


def _truncated(model, tmp_path):
  folder = _copy(model, tmp_path)
  weights = folder / "model.safetensors"
  with open(weights, "r+b") as f:
    f.truncate(os.path.getsize(weights) // 2)
  return folder


def _config_only(model, tmp_path):
  folder = tmp_path / "ckpt"
  folder.mkdir()
  shutil.copy(os.path.join(model, "config.json"), folder)
  return folder


def _unknown_arch(model, tmp_path):
  folder = _copy(model, tmp_path)
  raw = json.loads((folder / "config.json").read_text())
  raw.update(model_type="llama", architectures=["LlamaForCausalLM"])
  (folder / "config.json").write_text(json.dumps(raw))
  return folder


def _empty_dir(model, tmp_path):
  (tmp_path / "ckpt").mkdir()
  return tmp_path / "ckpt"


def _text_as_png(tmp_path):
  path = tmp_path / "x.png"
  path.write_text("not a picture\n")
  return path


def _zero_bytes(tmp_path):
  path = tmp_path / "empty.png"
  path.touch()
  return path


def _truncated_png(tmp_path):
  path = tmp_path / "cut.png"
  testing.scene_image().save(path)
  path.write_bytes(path.read_bytes()[:200])
  return path


def _huge_png(tmp_path):
  """A 20000x20000 PNG header (the data is never decoded: refused from the header)."""
  path = tmp_path / "huge.png"
  png_header_only(path, 20000, 20000)
  return path


# (id, model folder maker or None for the good model, image maker or None for the good image,
#  extra args, a fragment the error line must contain)
BAD = [
    ("missing-image", None, lambda t: t / "nope.png", [], "not found"),
    ("corrupt-image", None, _text_as_png, [], "cannot read image"),
    ("zero-byte-image", None, _zero_bytes, [], "empty"),
    ("missing-model-dir", lambda m, t: t / "no_such_dir", None, [], "not found"),
    ("no-config", _empty_dir, None, [], "config.json"),
    ("no-safetensors", _config_only, None, [], "safetensors"),
    ("unknown-architecture", _unknown_arch, None, [], "unknown architecture"),
    ("truncated-safetensors", _truncated, None, [], "truncated"),
    ("prompt-too-long", None, None, ["--max-length", 20], "prompt is"),
    ("negative-temperature", None, None, ["--temperature", -0.5], "temperature"),
    ("top-p-zero", None, None, ["--top-p", 0], "top-p"),
    ("top-p-above-one", None, None, ["--top-p", 1.5], "top-p"),
    ("max-new-tokens-zero", None, None, ["--max-new-tokens", 0], "max-new-tokens"),
    ("max-new-tokens-negative", None, None, ["--max-new-tokens", -3], "max-new-tokens"),
    ("negative-top-k", None, None, ["--top-k", -1], "top-k"),
    ("empty-prompt", None, None, ["--prompt", ""], "prompt"),
    ("blank-prompt", None, None, ["--prompt", "   "], "prompt"),
    ("video-without-frames", None, None, ["--video", "/no/such/frames_*.png"], "frames"),
    ("truncated-image", None, _truncated_png, [], "cannot read image"),
    ("huge-image", None, _huge_png, [], "too large"),
    ("more-markers-than-images", None, None, ["--prompt", "Compare <image> with <image>."],
     "2 <image> markers but 1"),
    ("more-images-than-markers", None, None, ["--image", "{image}", "--prompt", "Is <image> red?"],
     "1 <image> markers but 2"),
    ("image-token-in-prompt-text", None, None, ["--prompt", "Describe <|image_pad|>."],
     "more image placeholders than images"),
    ("stream-with-json", None, None, ["--stream", "--json"], "--stream"),
]


@pytest.mark.parametrize("make_model, make_image, extra, fragment", [b[1:] for b in BAD],
                         ids=[b[0] for b in BAD])
def test_bad_input(model, image, tmp_path, make_model, make_image, extra, fragment):
  folder = make_model(model, tmp_path) if make_model else model
  img = make_image(tmp_path) if make_image else image
  extra = [str(a).replace("{image}", image) for a in extra]
  # The last --prompt / --max-new-tokens wins, so `extra` may override these defaults.
  r = cli("--model", folder, "--image", img, "--prompt", "Describe.",
          "--max-new-tokens", MAX_NEW, *extra)
  assert r.returncode == 2, (r.stdout, r.stderr)
  assert "Traceback" not in r.stderr
  lines = [l for l in r.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
  assert fragment in lines[0], lines[0]
  assert r.stdout == ""


def test_argparse_errors_exit_2(model):
  r = cli("--model", model, "--tiny", "--prompt", "x")  # --model and --tiny exclude each other
  assert r.returncode == 2 and "Traceback" not in r.stderr and "not allowed with" in r.stderr
  r = cli("--model", model, "--prompt", "x", "--max-new-tokens", "many")
  assert r.returncode == 2 and "Traceback" not in r.stderr and "invalid int" in r.stderr


@pytest.fixture(scope="module")
def draft_dirs(model, tmp_path_factory):
  """A random ViSpec draft for the tiny model, and bad ones: made for a model of another width
  or vocabulary, and one whose config has a field we do not know."""
  import dataclasses
  import jax
  import vispec_jax as vj
  target = vj.load_target(model)
  base = tmp_path_factory.mktemp("cli_drafts")
  cfg = vj.DraftConfig.for_target(target.config.text, kind="vispec")
  def save(name, c):
    return vj.save_draft(str(base / name), c, vj.draft.init_params(c, jax.random.PRNGKey(0)))
  dirs = {
      "good": save("good", cfg),
      "other-hidden": save("other-hidden", dataclasses.replace(
          cfg, hidden_size=32, intermediate_size=64, num_heads=2, num_kv_heads=2)),
      "other-vocab": save("other-vocab", dataclasses.replace(cfg, vocab_size=cfg.vocab_size + 8)),
      "unknown-field": save("unknown-field", cfg),
      "target-as-draft": model,
  }
  config = base / "unknown-field" / "config.json"
  raw = json.loads(config.read_text())
  raw["vispec_jax_draft"]["num_experts"] = 4
  config.write_text(json.dumps(raw))
  return dirs


def _prompts_file(tmp_path, image):
  path = tmp_path / "q.jsonl"
  path.write_text(json.dumps({"prompt": "Describe the image.", "images": [image]}) + "\n\n" +
                  json.dumps({"prompt": "What colour is the square?"}) + "\n")
  return path


def test_draft_with_prompts_file_matches_vanilla(model, image, draft_dirs, tmp_path):
  prompts = _prompts_file(tmp_path, image)
  spec = cli("--model", model, "--prompts", prompts, "--draft", draft_dirs["good"],
             "--tree", "dynamic", "--tree-depth", 2, "--tree-top-k", 3, "--tree-tokens", 6,
             "--max-new-tokens", 6, "--json")
  assert spec.returncode == 0, spec.stderr
  vanilla = cli("--model", model, "--prompts", prompts, "--max-new-tokens", 6, "--json")
  assert vanilla.returncode == 0, vanilla.stderr
  s = [json.loads(l) for l in spec.stdout.splitlines()]
  v = [json.loads(l) for l in vanilla.stdout.splitlines()]
  assert len(s) == len(v) == 2
  assert [r["tokens"] for r in s] == [r["tokens"] for r in v]  # lossless
  assert all(r["target_forwards"] >= 1 and r["tokens_per_forward"] >= 1 for r in s)


def _non_utf8(tmp_path):
  path = tmp_path / "q.jsonl"
  path.write_bytes(b'{"prompt": "caf\xe9"}\n')
  return path


def _bad_json(tmp_path):
  path = tmp_path / "q.jsonl"
  path.write_text('{"prompt": "ok"}\n{"prompt": \n')
  return path


@pytest.mark.parametrize("make_file,fragment", [(_non_utf8, "not UTF-8"), (_bad_json, ":2: not valid JSON")],
                         ids=["non-utf8-prompts-file", "bad-json-line"])
def test_bad_prompts_file(model, tmp_path, make_file, fragment):
  r = cli("--model", model, "--prompts", make_file(tmp_path), "--max-new-tokens", MAX_NEW)
  assert r.returncode == 2 and "Traceback" not in r.stderr
  lines = [l for l in r.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], r.stderr


@pytest.mark.parametrize("name,fragment", [
    ("other-hidden", "draft hidden_size is 32"), ("other-vocab", "draft vocab_size"),
    ("unknown-field", "unknown draft config fields ['num_experts']"),
    ("target-as-draft", "model_type 'qwen2_5_vl' is not a draft")])
def test_bad_draft(model, image, draft_dirs, name, fragment):
  r = cli("--model", model, "--image", image, "--prompt", "Describe.", "--draft", draft_dirs[name],
          "--max-new-tokens", MAX_NEW)
  assert r.returncode == 2 and "Traceback" not in r.stderr
  lines = [l for l in r.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], r.stderr
  assert r.stdout == ""


def test_stream_prints_the_answer(model, image, draft_dirs):
  """--stream with a draft prints, piece by piece, the answer vanilla decoding gives."""
  ask = ("--model", model, "--image", image, "--prompt", "Describe the image.",
         "--max-new-tokens", 8)
  streamed = cli(*ask, "--draft", draft_dirs["good"], "--tree", "chain", "--tree-depth", 2,
                 "--stream")
  assert streamed.returncode == 0, streamed.stderr
  vanilla = cli(*ask, "--json")
  assert vanilla.returncode == 0, vanilla.stderr
  assert streamed.stdout == json.loads(vanilla.stdout)["answer"] + "\n"
