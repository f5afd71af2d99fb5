"""Training and datagen command lines: config errors are one line naming the key (exit 2),
--help exits 0, a workdir is locked against a second run, metrics of redone steps are not
logged twice."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from configs import common, tiny_qwen
from proj.scenes.configs import draft as scenes_draft, target as scenes_target
from train import cli as train_cli, loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _set(config, key, value):
  *parents, leaf = key.split(".")
  node = config
  for p in parents:
    node = node[p]
  with node.ignore_type():
    node[leaf] = value


# (key, bad value, fragment of the message)
BAD_VALUES = [
    ("batch_size", 0, "config.batch_size must be an integer >= 1, got 0"),
    ("batch_size", 2.5, "config.batch_size must be an integer"),
    ("batch_size", None, "config.batch_size"),
    ("checkpoint.every", 0, "config.checkpoint.every"),
    ("checkpoint.keep", -1, "config.checkpoint.keep"),
    ("log_every", 0, "config.log_every"),
    ("eval_every", -1, "config.eval_every"),
    ("total_steps", 0, "config.total_steps must be an integer >= 1 or None"),
    ("warmup_steps", -3, "config.warmup_steps"),
    ("num_epochs", 0, "config.num_epochs"),
    ("seed", -1, "config.seed"),
    ("seed", 2**40, "config.seed"),
    ("optim.lr", float("nan"), "config.optim.lr must be a finite number"),
    ("optim.lr", float("inf"), "config.optim.lr"),
    ("optim.b2", 1.0, "config.optim.b2"),
    ("optim.eps", 0.0, "config.optim.eps"),
    ("optim.lr_scales", [0.1], "config.optim.lr_scales"),
    ("optim.lr_scales", {"vision": -1.0}, "config.optim.lr_scales"),
    ("loss.weights.soft_ce", -1.0, "config.loss.weights"),
    ("noise.ref_len", 0, "config.noise.ref_len"),
    ("mesh", (3, 3), "config.mesh must be (data, fsdp, tensor)"),
    ("mesh", (0, -1, 1), "config.mesh"),
    ("data.max_len", 0, "config.data.max_len"),
    ("data.buckets", (), "config.data.buckets"),
    ("data.buckets", (128, 64), "config.data.buckets must be strictly increasing"),
    ("data.eval_fraction", 1.0, "config.data.eval_fraction"),
    ("data.features", "offline", "config.data.features must be one of"),
    ("data.limit", 0, "config.data.limit"),
    ("data.name", "", "config.data.name"),
    ("draft.kind", "medusa2", "config.draft.kind"),
    ("target.dtype", "int8", "config.target.dtype"),
    ("datagen.batch_size", 0, "config.datagen.batch_size"),
    ("datagen.chunk_size", 0, "config.datagen.chunk_size"),
    ("datagen.max_new_tokens", -1, "config.datagen.max_new_tokens"),
    ("datagen.num_workers", 0, "config.datagen.num_workers"),
    ("datagen.worker", 3, "config.datagen.worker must be < datagen.num_workers"),
    ("datagen.image_size", (56,), "config.datagen.image_size must be 2 positive integers"),
    ("datagen.image_size", (0, 56), "config.datagen.image_size"),
    ("datagen.input", "synthetic:abc", "config.datagen.input synthetic:N"),
    ("datagen.input", "synthetic:0", "config.datagen.input"),
    ("datagen.input", "", "config.datagen.input"),
    ("datagen.image_position", "middle", "config.datagen.image_position"),
    ("datagen.feature_dtype", "int8", "config.datagen.feature_dtype"),
    ("eval_tau.total_tokens", 1, "config.eval_tau.total_tokens"),
    ("stop_at_step", 0, "config.stop_at_step"),
]


@pytest.mark.parametrize("key, value, fragment", BAD_VALUES,
                         ids=[f"{k}={v!r}" for k, v, _ in BAD_VALUES])
def test_config_check_names_the_key(key, value, fragment):
  config = tiny_qwen.get_config()
  _set(config, key, value)
  with pytest.raises(ValueError) as e:
    common.check(config)
  assert fragment in str(e.value)


@pytest.mark.parametrize("config", [tiny_qwen.get_config(), tiny_qwen.get_config("stage=1"),
                                    scenes_target.get_config(), scenes_draft.get_config()],
                         ids=["tiny_qwen", "tiny_qwen-stage1", "scenes_target", "scenes_draft"])
def test_shipped_configs_pass(config):
  common.check(config)


def test_mesh_that_the_devices_cannot_fill():
  from train import sharding
  with pytest.raises(ValueError, match=r"config.mesh \(3, 3, 3\): .*needs 27 devices"):
    sharding.make_mesh((3, 3, 3))


@pytest.mark.parametrize("key,value", [("heldout.scenes", 0), ("scene_word_weight", 0.0)])
def test_target_config_checks_its_own_keys(key, value):
  config = scenes_target.get_config()
  _set(config, key, value)
  with pytest.raises(ValueError, match=f"config.{key}"):
    common.check(config)


def test_flag_errors_are_one_line():
  argv = ["--config", "configs/tiny_qwen.py", "--config.data.nope=1"]
  assert train_cli.flag_error(argv, KeyError("'nope'")) == (
      "--config.data.nope: the config has no key 'nope'")
  message = ("flag --config=c.py:x=1: Error whilst parsing config file:\n\nTraceback (most recent "
             "call last):\n  File \"c.py\", line 3\nValueError: unknown config arg 'x'\n")
  from absl import flags
  line = train_cli.flag_error(argv, flags.IllegalFlagValueError(message))
  assert line == ("flag --config=c.py:x=1: Error whilst parsing config file: ValueError: unknown "
                  "config arg 'x'")
  assert train_cli.flag_error(["--config=c.py"], NameError("name 'x' is not defined")) == (
      "--config c.py: cannot load it: NameError: name 'x' is not defined")


# ---------------------------------------------------------------------------- locks


def test_second_holder_of_a_workdir_fails_at_once(tmp_path):
  with loop.workdir_lock(str(tmp_path / "w")):
    with pytest.raises(loop.WorkdirInUse, match=r"--workdir .* is in use by another run \(pid "):
      with loop.workdir_lock(str(tmp_path / "w")):
        pass
  with loop.workdir_lock(str(tmp_path / "w")):  # released
    pass
  (tmp_path / "f").write_text("x")
  with pytest.raises(ValueError, match="is a file, not a folder"):
    loop.workdir_lock(str(tmp_path / "f"))


def test_lock_of_a_killed_process_is_free(tmp_path):
  """flock dies with its process: a run killed with SIGKILL leaves no stale lock."""
  workdir = str(tmp_path / "w")
  code = ("import sys, time; from train import loop\n"
          "with loop.workdir_lock(sys.argv[1]):\n"
          "  print('locked', flush=True); time.sleep(600)\n")
  proc = subprocess.Popen([sys.executable, "-c", code, workdir], cwd=REPO, text=True,
                          stdout=subprocess.PIPE, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  try:
    assert proc.stdout.readline().strip() == "locked"
    with pytest.raises(loop.WorkdirInUse, match=f"pid {proc.pid} on "):
      with loop.workdir_lock(workdir):
        pass
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  with loop.workdir_lock(workdir):
    pass


def test_redone_steps_are_not_logged_twice(tmp_path):
  path = tmp_path / "metrics.jsonl"
  rows = [{"step": 0, "compile_s": 1.0}] + [{"step": s, "loss": 1.0 / s} for s in range(1, 14)]
  path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 14, "lo')  # cut short
  loop.drop_redone_rows(str(path), 10)  # resumed from the checkpoint of step 10
  kept = [json.loads(l) for l in path.read_text().splitlines()]
  assert kept == rows[:11]
  before = path.read_text()
  loop.drop_redone_rows(str(path), 10)
  assert path.read_text() == before


# ---------------------------------------------------------------- the command lines


def _cli(module, *args):
  return subprocess.Popen([sys.executable, "-m", module, *args], cwd=REPO,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"}, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_command_lines(tmp_path):
  """--help exits 0; bad flags and config values are one line naming the flag or key; a second
  run on a locked workdir fails at once. The processes run side by side (each imports JAX)."""
  (tmp_path / "afile").write_text("x")
  busy = tmp_path / "busy"
  tiny = ["--config", "configs/tiny_qwen.py"]
  cases = {
      "train --help": (("train", "--help"), 0, "--workdir"),
      "datagen --help": (("train.datagen", "--help"), 0, "--config"),
      "target --help": (("proj.scenes.train_target", "--help"), 0, "--export_only"),
      "missing config": (("train", "--config", "configs/nope.py", "--workdir", str(tmp_path)), 2,
                         "error: --config configs/nope.py: file not found"),
      "no workdir": (("train", *tiny), 2, "--workdir"),
      "datagen without config": (("train.datagen",), 2, "--config"),
      "unknown key": (("train.datagen", *tiny, "--config.datagen.nope=1"), 2,
                      "error: --config.datagen.nope: the config has no key 'nope'"),
      "zero batch": (("train", *tiny, "--config.batch_size=0", "--workdir", str(tmp_path / "z")),
                     2, "error: config.batch_size must be an integer >= 1, got 0"),
      "workdir is a file": (("train", *tiny, "--workdir", str(tmp_path / "afile")), 2,
                            "is a file, not a folder"),
      "busy workdir": (("train", *tiny, "--workdir", str(busy)), 2, "is in use by another run"),
  }
  with loop.workdir_lock(str(busy)):
    procs = {name: (_cli(*c[0]), c[1], c[2]) for name, c in cases.items()}
    for name, (proc, status, fragment) in procs.items():
      out, err = proc.communicate(timeout=600)
      assert proc.returncode == status, (name, err[-2000:])
      assert "Traceback" not in err, (name, err)
      if status == 2:
        lines = [l for l in err.splitlines() if l.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], (
            name, err)
      else:
        assert fragment in out, (name, out)
