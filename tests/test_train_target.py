"""The scenes target trainer (proj/scenes/train_target.py) on a tiny model: scenes TFDS data -> datagen
records -> training from scratch -> export -> `vj.load_target` + generation, the held-out check,
and an exact resume from a time-boxed stop."""

import json
import os

import jax
import numpy as np
import pytest

import vispec_jax as vj
from proj.scenes.configs import target as scenes_target
from proj.scenes import target_eval, train_target as target
from proj.scenes import generator as scenes, tfds_builder as scenes_tfds

STEPS = 16


def metrics(workdir):
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  return {r["step"]: r for r in rows if "loss" in r and "lr" in r}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  from train import cli
  cli.setup()
  root = str(tmp_path_factory.mktemp("target"))
  tfds_dir = os.path.join(root, "tfds")
  scenes_tfds.build(tfds_dir, train=20, validation=2, test=0, image_size=112)
  tokenizer = scenes.save_tokenizer(scenes.train_tokenizer(samples=30), os.path.join(root, "tok"))

  def config(**extra):
    c = scenes_target.get_config("model=tiny")
    c.tokenizer = tokenizer
    c.datagen.update(dict(input="tfds:scenes_dataset/size112:train", tfds_data_dir=tfds_dir,
                          image_size=(112, 112), chunk_size=8, progress=False))
    c.data.update(dict(dir=os.path.join(root, "data"), max_len=640, buckets=(640,),
                       eval_fraction=0.2))
    c.update(dict(batch_size=4, total_steps=STEPS, warmup_steps=2, log_every=1,
                  eval_every=STEPS, eval_batches=1, progress=False,
                  compilation_cache=os.path.join(root, "xla_cache"), **extra))
    c.optim.lr = 1e-2
    c.scene_word_weight = 2.0  # the weighted objective (the default 1.0 runs in the chain test)
    c.checkpoint.every = 3
    c.heldout.update(dict(input="tfds:scenes_dataset/size112:validation", scenes=2,
                          max_new_tokens=8, batch_size=2))
    return c

  out = {"root": root, "config": config,
         "ref": target.train(config(), os.path.join(root, "ref"))}
  resume = os.path.join(root, "resume")
  out["stopped"] = target.train(config(stop_at_step=7), resume)
  out["resumed"] = target.train(config(), resume)
  return out


def test_loss_falls_and_export_generates(runs):
  ref = metrics(os.path.join(runs["root"], "ref"))
  assert sorted(ref) == list(range(1, STEPS + 1))
  first, last = ref[1]["loss"], np.mean([ref[s]["loss"] for s in range(STEPS - 2, STEPS + 1)])
  print(f"loss {first:.3f} -> {last:.3f}")
  assert first > np.log(500) and last < 0.75 * first
  out = runs["ref"]
  assert out["step"] == STEPS
  for k in ("token_acc", "token_acc_swapped"):
    assert 0 <= out["eval"][f"eval/{k}"] <= 1
  tgt = vj.load_target(out["target"])
  assert tgt.config.vision.depth == 1 and tgt.config.text.hidden_size == 32
  image = scenes.sample(123, size=112)["image"]
  batch = vj.prepare(tgt, ["Describe the image."], images=[[image]])
  assert int((batch.input_ids == tgt.config.image_token_id).sum()) == 16
  gen = vj.trim(vj.generate(tgt, batch, max_new_tokens=6))[0]
  assert 1 <= len(gen) <= 6
  assert isinstance(tgt.tokenizer.decode(gen), str)
  held = out["heldout"]
  assert held["scenes"] == 2
  for k in ("token_acc", "token_acc_swapped", "content_acc", "content_acc_swapped",
            "sentence_precision", "sentence_recall", "exact"):
    assert 0 <= held[k] <= 1, k
  with open(os.path.join(runs["root"], "ref", "heldout.json")) as f:
    assert json.load(f)["token_acc"] == held["token_acc"]


def test_resume_is_exact(runs):
  assert runs["stopped"]["step"] == 7 and runs["stopped"]["target"] is None
  assert runs["resumed"]["step"] == STEPS
  ref = metrics(os.path.join(runs["root"], "ref"))
  res = metrics(os.path.join(runs["root"], "resume"))
  assert sorted(res) == list(range(1, STEPS + 1))
  for s in res:
    assert abs(res[s]["loss"] - ref[s]["loss"]) <= 1e-6, (s, res[s]["loss"], ref[s]["loss"])
  a = vj.load_target(runs["ref"]["target"]).params
  b = vj.load_target(runs["resumed"]["target"]).params
  diff = jax.tree.map(lambda x, y: float(np.max(np.abs(np.asarray(x) - np.asarray(y)))), a, b)
  assert max(jax.tree.leaves(diff)) <= 1e-5


def test_mix_dataset_is_built_from_its_datagen_overrides(runs, tmp_path):
  """data.mix.datagen: a missing mixed-in dataset is built by the trainer (stage 3's inventories)
  from config.datagen with those overrides, under data.mix.name, and then trained on."""
  from train import datagen
  c = runs["config"]()
  c.total_steps = c.eval_every = 2
  c.data.dir = str(tmp_path / "data")
  c.data.mix = dict(name="mixed", weight=0.5,
                    datagen=dict(input="tfds:scenes_dataset/size112:train[:6]"))
  out = target.train(c, str(tmp_path / "run"))
  assert out["step"] == 2
  mix = datagen.mix_config(c)
  assert mix.data.name == "mixed" and mix.datagen.input.endswith("train[:6]")
  assert c.data.name != "mixed" and c.datagen.input.endswith(":train")  # the config untouched
  from train import data
  source, _ = data.open_dataset(datagen.dataset_dir(mix))
  assert len(source) == 6


def test_scenes_draft_config_stages():
  """proj/scenes/configs/draft.py: each draft kind with its stage's losses, on the target's records."""
  from proj.scenes.configs import draft as scenes_draft
  eagle, vispec = scenes_draft.get_config("stage=1"), scenes_draft.get_config("")
  medusa = scenes_draft.get_config("draft=medusa,records=64")
  assert (eagle.draft.kind, vispec.draft.kind, medusa.draft.kind) == ("eagle", "vispec", "medusa")
  assert eagle.loss.mtp_steps == 0 and vispec.loss.mtp_steps == 1
  assert medusa.datagen.input == "tfds:scenes_dataset:train[-64:]"
  assert vispec.data.features == "precomputed" and vispec.datagen.store_features


def test_content_mask_marks_exactly_the_scene_words():
  tok = vj.load_target("models/scenes/target").tokenizer
  text = "Top right: a medium red star, solid. The blue crosses are in the middle row. Two objects."
  enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
  ids = enc["input_ids"]
  mask = target_eval.content_mask(enc["offset_mapping"], text)
  assert mask.shape == (len(ids),)
  marked = "".join(tok.decode([t]) if m else " " for t, m in zip(ids, mask)).split()
  assert marked == ["Top", "right", "medium", "red", "star", "solid", "blue", "crosses", "middle",
                    "Two"]
  plain = "The objects sit on an invisible grid."
  offsets = tok(plain, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
  assert not target_eval.content_mask(offsets, plain).any()


def test_scene_word_weight_weighs_the_objective_not_the_logged_loss(tiny_qwen_dir):
  """lm.answer_loss with token_weight: the objective is the mean weighted by the predicted
  token's weight; metrics["loss"] stays the plain mean; all-ones weights change nothing."""
  import jax.numpy as jnp
  from train import lm
  from vispec_jax.models import decoder
  tgt = vj.load_target(tiny_qwen_dir)
  cfg = tgt.config.text
  rng = np.random.default_rng(0)
  ids = jnp.asarray(rng.integers(0, cfg.vocab_size, (2, 12)), jnp.int32)
  answer = jnp.asarray(np.arange(12) >= 5)[None].repeat(2, 0)
  batch = {"ids": ids, "attention_mask": jnp.ones((2, 12), bool), "answer": answer,
           "positions": jnp.broadcast_to(jnp.arange(12), (2, 3, 12))}
  plain, metrics = lm.answer_loss(cfg, None, tgt.params, batch)
  ones, _ = lm.answer_loss(cfg, None, tgt.params, batch, jnp.ones(cfg.vocab_size))
  weight = jnp.ones(cfg.vocab_size).at[ids[0, 8]].set(5.0)
  weighted, wmetrics = lm.answer_loss(cfg, None, tgt.params, batch, weight)
  hidden, _ = lm.forward(cfg, None, tgt.params, batch)
  logp = jax.nn.log_softmax(decoder.logits(tgt.params["text"], hidden), -1)
  nll = -np.take_along_axis(np.asarray(logp[:, :-1]), np.asarray(ids[:, 1:, None]), -1)[..., 0]
  supervised = np.asarray(answer[:, 1:])
  w = np.asarray(weight)[np.asarray(ids[:, 1:])] * supervised
  np.testing.assert_allclose(float(plain), nll[supervised].mean(), rtol=1e-5)
  np.testing.assert_allclose(float(ones), float(plain), rtol=1e-6)
  np.testing.assert_allclose(float(weighted), (nll * w).sum() / w.sum(), rtol=1e-5)
  assert abs(float(weighted) - float(plain)) > 1e-4
  assert float(wmetrics["loss"]) == float(metrics["loss"])
