"""Hostile input to every command line: one `error:` line naming the option, file or field,
exit status 2, no traceback (infer/cli.py, train/cli.py). Most cases call the CLI's main(argv)
in this process (option checks run before any model is loaded); a few need a subprocess (a
closed stdout, absl flag parsing)."""

import json
import os
import subprocess
import sys

import pytest

from infer import bench, cli, demo, generate, memory
from vispec_jax import sharding, testing

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  """A picture, a random draft folder (never loaded: option checks come first) and JSONL
  prompt files with one bad field each."""
  root = tmp_path_factory.mktemp("cli_errors")
  testing.scene_image().save(root / "img.png")
  (root / "draft").mkdir()
  (root / "afile").write_text("x")
  lines = {
      "img_int": {"prompt": "x", "images": [3]},
      "img_null": {"prompt": "x", "images": [None]},
      "img_nested": {"prompt": "x", "images": [["a.png"]]},
      "img_empty": {"prompt": "x", "images": [""]},
      "vid_dict": {"prompt": "x", "videos": [{"a": 1}]},
      "singular_key": {"prompt": "x", "image": "img.png"},
      "surrogate": '{"prompt": "\\udcff hello"}',
      "surrogate_pair_half": '{"prompt": "a \\ud83d b"}',
      "prompt_list": {"prompt": ["x"]},
      "toplevel_list": "[1, 2]",
  }
  for name, row in lines.items():
    (root / f"{name}.jsonl").write_text((row if isinstance(row, str) else json.dumps(row)) + "\n")
  return root


def one_error_line(capsys, fn, argv):
  try:
    rc = fn(argv)
  except SystemExit as e:  # argparse's errors (usage); `python -m` exits with the same status
    rc = e.code
  captured = capsys.readouterr()
  lines = [l for l in captured.err.splitlines() if l.strip() and not l.startswith("note:")]
  assert rc == 2, (rc, captured.err)
  assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
  assert "Traceback" not in captured.err
  return lines[0]


# (id, argv after --model/--image/--prompt, a fragment of the error line)
GENERATE = [
    ("max-new-tokens-huge", ["--max-new-tokens", str(10**12)], "--max-new-tokens must be in [1,"),
    ("max-new-tokens-zero", ["--max-new-tokens", "0"], "--max-new-tokens"),
    ("max-length-negative", ["--max-length", "-5"], "--max-length"),
    ("max-length-huge", ["--max-new-tokens", "4", "--max-length", str(10**13)], "--max-length"),
    ("top-k-huge", ["--top-k", str(10**20)], "--top-k"),
    ("top-k-negative", ["--top-k", "-1"], "--top-k"),
    ("seed-negative", ["--seed", "-1"], "--seed must be in [0, 4294967295]"),
    ("seed-beyond-uint32", ["--seed", str(2**32)], "--seed"),
    ("seed-beyond-int64", ["--seed", str(2**64)], "--seed"),
    ("temperature-inf", ["--temperature", "inf"], "--temperature must be a finite number"),
    ("temperature-nan", ["--temperature", "nan"], "--temperature"),
    ("top-p-nan", ["--top-p", "nan"], "--top-p"),
    ("top-p-zero", ["--top-p", "0"], "--top-p"),
    ("video-fps-inf", ["--video-fps", "inf"], "--video-fps"),
    ("video-fps-tiny", ["--video-fps", "1e-300"], "--video-fps"),
    ("tree-depth-huge", ["--tree-depth", "100000"], "--tree-depth"),
    ("tree-chain-huge", ["--tree", "chain", "--tree-depth", "100000"], "--tree-depth"),
    ("tree-tokens-huge", ["--tree-tokens", str(10**9)], "--tree-tokens"),
    ("tree-top-k-huge", ["--tree-top-k", str(10**9)], "--tree-top-k"),
    ("tree-depth-zero", ["--tree-depth", "0"], "--tree-depth"),
    ("mesh-3x3", ["--mesh", "3x3"], "--mesh '3x3'"),
    ("mesh-zero", ["--mesh", "data=0"], "--mesh"),
    ("mesh-zero-and-rest", ["--mesh", "data=0,fsdp=-1"], "--mesh"),
    ("mesh-negative", ["--mesh", "data=-2"], "--mesh"),
    ("mesh-twice", ["--mesh", "data=1,data=1"], "given twice"),
    ("mesh-empty", ["--mesh", ""], "empty mesh spec"),
    ("mesh-too-many-devices", ["--mesh", "data=999"], "needs 999 devices"),
    ("mesh-unknown-axis", ["--mesh", "model=1"], "unknown mesh axes"),
    ("draft-missing", ["--draft", "{root}/nope"], "--draft folder not found"),
    ("draft-is-a-file", ["--draft", "{root}/afile"], "--draft"),
    ("surrogate-prompt", ["--prompt", "\udcff what"], "--prompt is not valid Unicode"),
    ("stream-with-warmup", ["--stream", "--warmup"], "--stream"),
    ("dtype-unknown", ["--dtype", "float16"], "argument --dtype"),
    ("int-not-int", ["--top-k", "1.5"], "argument --top-k: invalid int"),
]


@pytest.mark.parametrize("extra, fragment", [c[1:] for c in GENERATE], ids=[c[0] for c in GENERATE])
def test_generate_options(files, capsys, extra, fragment):
  """Refused before the model is loaded (the --model folder here holds no checkpoint)."""
  extra = [a.replace("{root}", str(files)) for a in extra]
  argv = ["--model", str(files / "draft"), "--image", str(files / "img.png"), "--prompt", "x",
          "--draft", str(files / "draft"), *extra]
  assert fragment in one_error_line(capsys, generate.main, argv)


PROMPT_FILES = [
    ("img_int", "images[0] must be a path (a non-empty string), got 3"),
    ("img_null", "images[0] must be a path"),
    ("img_nested", "images[0] must be a path"),
    ("img_empty", "images[0] must be a path"),
    ("vid_dict", "videos[0] must be a path"),
    ("singular_key", "unknown keys ['image']"),
    ("surrogate", "prompt is not valid Unicode text"),
    ("surrogate_pair_half", "prompt is not valid Unicode text"),
    ("prompt_list", "non-empty prompt"),
    ("toplevel_list", "non-empty prompt"),
]


@pytest.mark.parametrize("name, fragment", PROMPT_FILES, ids=[c[0] for c in PROMPT_FILES])
def test_generate_prompts_file_fields(files, capsys, name, fragment):
  path = files / f"{name}.jsonl"
  line = one_error_line(capsys, generate.main, ["--model", str(files / "draft"), "--prompts", str(path)])
  assert f"{path}:1:" in line and fragment in line, line


def test_generate_limits_of_the_loaded_model(tiny_qwen_dir, files, capsys):
  """Checks that need the model's config: positions and vocabulary."""
  base = ["--model", tiny_qwen_dir, "--image", str(files / "img.png"), "--prompt", "x"]
  assert "max_position_embeddings" in one_error_line(
      capsys, generate.main, base + ["--max-length", str(10**6)])
  assert "--top-k 100000 is more than the vocabulary" in one_error_line(
      capsys, generate.main, base + ["--top-k", "100000", "--temperature", "1"])


DEMO = [
    ("seed-negative", ["--seed", "-1"], "--seed"),
    ("seed-huge", ["--seed", str(2**70)], "--seed"),
    ("max-new-tokens-zero", ["--max-new-tokens", "0"], "--max-new-tokens"),
    ("max-new-tokens-huge", ["--max-new-tokens", str(10**12)], "--max-new-tokens"),
    ("repeats-zero", ["--repeats", "0"], "--repeats must be in [1,"),
    ("tree-unknown", ["--tree", "bush"], "--tree: unknown tree"),
    ("tree-chain-huge", ["--tree", "chain100000"], "--tree: chain depth"),
    ("tree-dynamic-huge", ["--tree", "dynamic-d100k100t100000"], "--tree: tree depth"),
    ("kind-unknown", ["--kind", "poem"], "--kind"),
    ("out-folder-missing", ["--out", "/nonexistent/x.png"], "--out /nonexistent/x.png: folder"),
    ("out-is-a-folder", ["--out", "/"], "--out / is a folder"),
    ("model-missing", ["--model", "/nonexistent"], "--model folder not found"),
]


@pytest.mark.parametrize("extra, fragment", [c[1:] for c in DEMO], ids=[c[0] for c in DEMO])
def test_demo_options(files, capsys, extra, fragment):
  argv = ["--model", str(files / "draft"), "--draft", str(files / "draft"), *extra]
  assert fragment in one_error_line(capsys, demo.main, argv)


BENCH = [
    ("no-command", [], "required: command"),
    ("vanilla-new-tokens-zero", ["vanilla", "--new-tokens", "0"], "--new-tokens"),
    ("vanilla-repeats-zero", ["vanilla", "--repeats", "0"], "--repeats"),
    ("vanilla-warmup-negative", ["vanilla", "--warmup", "-1"], "--warmup"),
    ("vanilla-threads-2", ["vanilla", "--threads", "2"], "--threads"),
    ("vanilla-json-folder-missing", ["vanilla", "--json", "/nonexistent/x.json"], "--json"),
    ("vanilla-folder-is-a-file", ["vanilla", "--folder", "{root}/afile"], "--folder"),
    ("spec-batch-negative", ["spec", "--batch", "1", "-4"], "--batch"),
    ("spec-mesh-zero", ["spec", "--mesh", "data=0"], "--mesh"),
    ("pieces-iters-zero", ["pieces", "--iters", "0"], "--iters"),
    ("cost-tau-nan", ["cost", "--tau", "nan"], "--tau"),
    ("cost-cache-zero", ["cost", "--cache", "0"], "--cache"),
    ("cost-itemsize-zero", ["cost", "--itemsize", "0"], "--itemsize"),
    ("cost-target-missing", ["cost", "--target", "/nonexistent"], "--target folder not found"),
    ("cost-target-without-config", ["cost", "--target", "{root}/draft"], "has no config.json"),
    ("cost-tree-too-deep", ["cost", "--trees", "chain99999"], "--trees: chain depth"),
    ("table-scenes-zero", ["table", "--target", "{root}", "--draft", "d={root}/draft",
                           "--scenes", "0"], "--scenes"),
    ("table-temperature-nan", ["table", "--target", "{root}", "--draft", "d={root}/draft",
                               "--temperatures", "nan"], "--temperatures"),
    ("table-json-is-a-folder", ["table", "--target", "{root}", "--draft", "d={root}/draft",
                                "--json", "/"], "--json / is a folder"),
    ("length-lengths-zero", ["length", "--target", "{root}", "--draft", "d={root}/draft",
                             "--lengths", "0"], "--lengths"),
]


@pytest.mark.parametrize("argv, fragment", [c[1:] for c in BENCH], ids=[c[0] for c in BENCH])
def test_bench_options(files, capsys, argv, fragment):
  argv = [a.replace("{root}", str(files)) for a in argv]
  assert fragment in one_error_line(capsys, bench.main, argv)


@pytest.mark.parametrize("argv, fragment", [
    (["--batch", "0"], "--batch"), (["--length", "-1"], "--length"),
    (["--config", "/nonexistent.json"], "/nonexistent.json"),
    (["--config", "{root}/afile"], "not valid JSON"),
    (["--config", "{root}/toplevel_list.jsonl"], "expected a JSON object")])
def test_memory_options(files, capsys, argv, fragment):
  argv = [a.replace("{root}", str(files)) for a in argv]
  assert fragment in one_error_line(capsys, memory.main, argv)


# ------------------------------------------------------------------------ shared pieces


@pytest.mark.parametrize("spec, fragment", [
    ("3x3", "AXIS=SIZE"), ("", "empty"), (",", "empty"), ("data=0", "positive integer"),
    ("data=-2", "positive integer"), ("data=0,fsdp=-1", "positive integer"),
    ("data=-1,fsdp=-1", "at most one"), ("data=1,data=1", "twice"), ("data=2", "needs 2 devices"),
    ("data=x", "AXIS=SIZE"), ("tensor=1e3", "AXIS=SIZE"), ("data=3,fsdp=-1", "cannot be split")])
def test_parse_mesh_refuses(spec, fragment):
  with pytest.raises(ValueError, match=fragment):
    sharding.parse_mesh(spec)


def test_parse_mesh_accepts():
  assert sharding.parse_mesh("data=-1") == {"data": 1, "fsdp": 1, "tensor": 1}
  assert sharding.parse_mesh(" data = 1 , tensor=1") == {"data": 1, "fsdp": 1, "tensor": 1}
  with pytest.raises(ValueError, match="positive integer"):
    sharding.parse_mesh({"data": True})


def test_run_turns_errors_into_statuses(capsys, monkeypatch):
  assert cli.run(lambda: 0) == 0 and cli.run(lambda: None) == 0
  def raising(e):
    def fn():
      raise e
    return fn
  assert cli.run(raising(ValueError("bad\nvalue"))) == 2
  assert capsys.readouterr().err == "error: bad value\n"
  assert cli.run(raising(FileNotFoundError("no such file: x"))) == 2
  assert capsys.readouterr().err == "error: no such file: x\n"
  assert cli.run(raising(ZeroDivisionError("oops"))) == 1  # a bug: one line, exit 1
  err = capsys.readouterr().err
  assert err.startswith("error: internal error: ZeroDivisionError: oops") and err.count("\n") == 1
  assert cli.run(raising(KeyboardInterrupt())) == 130
  monkeypatch.setattr(cli, "quiet_stdout", lambda: None)
  assert cli.run(raising(BrokenPipeError())) == 141
  assert capsys.readouterr().err == ""
  with pytest.raises(SystemExit):
    cli.run(raising(SystemExit(0)))


def test_check_output(tmp_path):
  assert cli.check_output("--out", str(tmp_path / "x.png"))
  with pytest.raises(ValueError, match="--out .* is a folder"):
    cli.check_output("--out", str(tmp_path))
  with pytest.raises(ValueError, match="folder .* not found"):
    cli.check_output("--out", str(tmp_path / "no" / "x.png"))


def test_stream_stops_quietly_when_stdout_closes(monkeypatch):
  """The streamer's write: a reader that went away makes it quiet (not an exception inside the
  compiled loop's callback); `run` then exits 141."""
  class Closed:
    calls = 0
    def write(self, text):
      Closed.calls += 1
      raise BrokenPipeError()
    def flush(self):
      pass
  monkeypatch.setattr(sys, "stdout", Closed())
  monkeypatch.setattr(cli, "quiet_stdout", lambda: None)
  out = generate.StdoutStream()
  out(0, "hello")
  out(0, "world")
  assert out.closed and Closed.calls == 1


def test_closed_pipe_while_streaming_exits_quietly():
  """`... --stream | head -c 0`: the reader is gone before the first token; exit 141, nothing
  but the --tiny note on stderr."""
  r, w = os.pipe()
  os.close(r)
  proc = subprocess.run(
      [sys.executable, "-m", "infer.generate", "--tiny", "--stream", "--prompt", "Describe.",
       "--max-new-tokens", "4"], cwd=REPO, env={**os.environ, "JAX_PLATFORMS": "cpu"},
      stdout=w, stderr=subprocess.PIPE, text=True, timeout=600)
  os.close(w)
  assert proc.returncode == 141, proc.stderr
  assert [l for l in proc.stderr.splitlines() if l.strip() and not l.startswith("note:")] == []
