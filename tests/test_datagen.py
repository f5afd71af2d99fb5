"""Training data generation (train/datagen.py): killed and restarted, every input is written
exactly once; records hold what training needs (prompt + answer tokens, answer mask, positions,
image); errors name the bad input."""

import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

import vispec_jax as vj
from configs import tiny_qwen
from train import data, datagen
from vispec_jax import testing

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_config(target_dir, data_dir, **datagen_overrides):
  c = tiny_qwen.get_config()
  c.target.folder = target_dir
  c.data.dir = str(data_dir)
  c.data.name = "t"
  c.datagen.update(dict(input="synthetic:10", chunk_size=2, batch_size=2, max_new_tokens=6,
                        progress=False))
  c.datagen.update(datagen_overrides)
  return c


def read_all(config):
  source, meta = data.open_dataset(datagen.dataset_dir(config))
  return [source[i] for i in range(len(source))], meta


def test_kill_and_resume_writes_every_input_once(tiny_qwen_dir, tmp_path):
  config = make_config(tiny_qwen_dir, tmp_path)
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  cmd = [sys.executable, "-m", "train.datagen", "--config", "configs/tiny_qwen.py",
         f"--config.target.folder={tiny_qwen_dir}", f"--config.data.dir={tmp_path}",
         "--config.data.name=t", "--config.datagen.input=synthetic:10",
         "--config.datagen.chunk_size=2", "--config.datagen.batch_size=2",
         "--config.datagen.max_new_tokens=6", "--config.datagen.progress=False",
         "--config.datagen.crash_after_chunks=2"]
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
  chunks = sorted(os.listdir(datagen.chunk_dir(config)))
  assert chunks == ["chunk-00000.pkl", "chunk-00001.pkl", "signature.json"]
  assert not os.path.exists(datagen.dataset_dir(config))
  # What a kill in the middle of a write or of the TFDS build leaves behind.
  with open(datagen.chunk_path(config, 2) + ".tmp12345", "wb") as f:
    f.write(b"half a pickle")
  stale = os.path.join(str(tmp_path), "vispec_draft_data", "t", "incomplete.ABC_1.0.0")
  os.makedirs(stale)

  out = datagen.run(config)  # the restart, in this process
  assert out == datagen.dataset_dir(config)
  records, meta = read_all(config)
  assert sorted(int(r["index"]) for r in records) == list(range(10))  # none lost, none twice
  assert [int(r["index"]) for r in records] == list(range(10))        # in input order
  assert meta["lengths"] == [len(r["tokens"]) for r in records]
  assert not [f for f in os.listdir(datagen.chunk_dir(config)) if ".tmp" in f]
  assert not os.path.exists(stale)
  # The chunks the killed run wrote equal what an uninterrupted run makes.
  again = datagen.Generator(config).chunk(0, 2)
  for a, b in zip(again, records[:2]):
    np.testing.assert_array_equal(a["tokens"], b["tokens"])
  # A third run finds the finished dataset and generates nothing.
  assert datagen.run(config) == out
  # While a run holds this worker's lock, a second one fails at once.
  from train import loop
  lock = os.path.join(str(tmp_path), "t.worker-0.lock")
  with loop.exclusive(lock, "x"):
    with pytest.raises(loop.WorkdirInUse, match="datagen output"):
      datagen.run(config)
  # Other settings on the built dataset: refused (naming them), not the old data returned...
  config.datagen.input = "synthetic:4"
  with pytest.raises(ValueError, match=r"other settings \(input: 'synthetic:10' there, "
                                       r"'synthetic:4' now\).*datagen.overwrite=True"):
    datagen.run(config)
  # ...or, when asked, deleted and generated again.
  config.datagen.overwrite = True
  assert datagen.run(config) == out
  records, _ = read_all(config)
  assert [int(r["index"]) for r in records] == list(range(4))


def test_records_rebuild_the_targets_inputs(tiny_qwen_dir, tmp_path):
  img = testing.scene_image(100, 60, seed=3)
  img.save(tmp_path / "a.png")
  rows = [{"question": "What colour is the square?", "image": "a.png"},
          {"question": "Describe a cat.", "image": None},
          {"question": "Say hi.", "answer": "hi there"}]
  with open(tmp_path / "in.jsonl", "w") as f:
    f.write("\n".join(json.dumps(r) for r in rows) + "\n")
  config = make_config(tiny_qwen_dir, tmp_path / "out", input=str(tmp_path / "in.jsonl"),
                       image_size=(28, 56), chunk_size=4, batch_size=4)
  datagen.run(config)
  records, meta = read_all(config)
  assert meta["image_hw"] == [28, 56] and meta["family"] == "qwen2_5_vl"
  target = vj.load_target(tiny_qwen_dir)
  for row, rec in zip(rows, records):
    has_image = row.get("image") is not None
    pil = img.resize((56, 28)) if has_image else None
    prompt = datagen.render_prompt(target, row["question"], has_image,
                                   config.datagen.system_prompt, config.datagen.instruction)
    batch = vj.prepare(target, [prompt], images=[[pil] if has_image else []], chat=False)
    ids = batch.input_ids[0, -batch.prompt_lengths[0]:]
    n, pl = len(rec["tokens"]), int(rec["prompt_length"])
    np.testing.assert_array_equal(rec["tokens"][:pl], ids)
    np.testing.assert_array_equal(rec["loss_mask"], np.arange(n) >= pl)
    assert rec["positions"].shape == (3, n)
    np.testing.assert_array_equal(rec["positions"][:, :pl],
                                  batch.positions[:, 0, -batch.prompt_lengths[0]:])
    assert int(rec["has_image"]) == has_image
    if has_image:
      np.testing.assert_array_equal(rec["image"], np.asarray(pil))
      assert tuple(rec["image_grid"]) == tuple(batch.vision[0].grid_thw)
    assert "system" in target.tokenizer.decode(rec["tokens"][:pl])
  # A given answer is stored as is (stage-1 style), ending with EOS; nothing is generated.
  want = target.tokenizer("hi there", add_special_tokens=False)["input_ids"]
  want = want + [target.config.eos_token_ids[0]]
  np.testing.assert_array_equal(records[2]["tokens"][int(records[2]["prompt_length"]):], want)


def test_bad_inputs_are_named(tiny_qwen_dir, tmp_path):
  path = tmp_path / "bad.jsonl"
  path.write_text('{"question": "ok"}\n{"question": \n')
  with pytest.raises(ValueError, match=r"bad.jsonl:2: not valid JSON"):
    datagen.load_inputs(str(path), None)
  path.write_text('{"image": "x.png"}\n')
  with pytest.raises(ValueError, match=r":1: needs a non-empty \"question\""):
    datagen.load_inputs(str(path), None)
  with pytest.raises(FileNotFoundError, match="datagen input not found"):
    datagen.load_inputs(str(tmp_path / "missing.jsonl"), None)
  testing.scene_image().save(tmp_path / "a.png")
  for line, message in [
      ('{"question": "q", "image": 3}', r":1: image must be a path \(a non-empty string\) or null, got 3"),
      ('{"question": "q", "image": ["a.png"]}', r":1: image must be a path"),
      ('{"question": "q", "image": "nope.png"}', r":1: image not found: .*nope.png"),
      ('{"question": "q", "answer": 7}', r":1: answer must be a string or null, got 7"),
      ('{"question": "\\udcff q"}', r":1: question is not valid Unicode text"),
      ('{"question": "q", "answer": "\\ud800"}', r":1: answer is not valid Unicode text"),
      ('{"question": "q", "images": ["a.png"]}', r"unknown key 'images' \(did you mean 'image'\?\)"),
      ('[1, 2]', r":1: needs a non-empty \"question\""),
  ]:
    path.write_text(line + "\n")
    with pytest.raises((ValueError, FileNotFoundError), match=message):
      datagen.load_inputs(str(path), None)
  # Finished chunks made with other settings are never mixed in.
  config = make_config(tiny_qwen_dir, tmp_path / "out")
  datagen.check_signature(config)
  config.datagen.max_new_tokens = 7
  with pytest.raises(ValueError, match="max_new_tokens"):
    datagen.check_signature(config)


def test_kept_answers_do_not_depend_on_the_weights(tiny_qwen_dir, tmp_path):
  """With kept answers the data is the same for any weights and any provenance file (a stage-2
  target started from another stage-1 run reuses the records); another config.json is not."""
  config = make_config(tiny_qwen_dir, tmp_path / "out", answer_key="answer")
  datagen.check_signature(config)
  other = tmp_path / "other"
  shutil.copytree(tiny_qwen_dir, other)
  (other / "init.json").write_text('{"target": "elsewhere"}')
  (other / "model.safetensors").write_bytes(b"other weights")
  config.target.folder = str(other)
  datagen.check_signature(config)
  raw = json.loads((other / "config.json").read_text())
  (other / "config.json").write_text(json.dumps(dict(raw, rms_norm_eps=0.5)))
  with pytest.raises(ValueError, match="target_files"):
    datagen.check_signature(config)


def test_tfds_input_with_kept_answers(tiny_qwen_dir, tmp_path):
  """A TFDS dataset as input (the scenes dataset), keeping its answers (no generation)."""
  from proj.scenes import tfds_builder as scenes_tfds
  tfds_dir = str(tmp_path / "tfds")
  scenes_tfds.build(tfds_dir, train=3, validation=0)
  config = make_config(tiny_qwen_dir, tmp_path / "out", input="tfds:scenes_dataset:train",
                       tfds_data_dir=tfds_dir, answer_key="answer", max_new_tokens=40)
  datagen.run(config)
  records, _ = read_all(config)
  target = vj.load_target(tiny_qwen_dir)
  src = datagen.load_inputs("tfds:scenes_dataset:train", config.datagen)
  for i, rec in enumerate(records):
    ex = src[i]
    want = target.tokenizer(ex["answer"], add_special_tokens=False)["input_ids"][:40]
    answer = rec["tokens"][int(rec["prompt_length"]):]
    np.testing.assert_array_equal(answer, want + [target.config.eos_token_ids[0]])
    assert ex["question"] in target.tokenizer.decode(rec["tokens"])
    np.testing.assert_array_equal(rec["image"], np.asarray(ex["image"].resize((56, 56))))
  # A sliced split (colons inside the brackets) reads the same examples.
  assert datagen.tfds_name_and_split("scenes_dataset/c:train[-2:]") == (
      "scenes_dataset/c", "train[-2:]")
  with pytest.raises(ValueError, match="expected tfds:NAME"):
    datagen.tfds_name_and_split("scenes_dataset")
  tail = datagen.load_inputs("tfds:scenes_dataset:train[-2:]", config.datagen)
  assert len(tail) == 2 and tail[1]["question"] == src[2]["question"]
