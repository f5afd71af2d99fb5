"""The procedural scenes dataset, its TFDS builder and the scenes tokenizer (issue 8)."""

import json
import os

import numpy as np
import pytest

from proj.scenes import generator as scenes
from vispec_jax.testing import SPECIAL_TOKENS

HELD_OUT = range(10_000_000, 10_000_120)  # seeds the tokenizer never saw


@pytest.fixture(scope="module")
def tokenizer():
  return scenes.train_tokenizer(samples=50, vocab_size=2048)


def test_same_seed_same_image_and_text():
  a, b = scenes.sample(17), scenes.sample(17)
  assert a["image"].tobytes() == b["image"].tobytes()
  assert a["image"].size == (224, 224) and a["image"].mode == "RGB"
  assert (a["question"], a["answer"], a["kind"], a["scene"]) == (
      b["question"], b["answer"], b["kind"], b["scene"])
  c = scenes.sample(18)
  assert a["image"].tobytes() != c["image"].tobytes()
  json.dumps(a["scene"])  # the scene dict is JSON-able (stored in the dataset)


@pytest.mark.parametrize("style", sorted(scenes.STYLES))
def test_scene_contents(style):
  kinds = set()
  shapes, sizes = scenes.STYLES[style]["shapes"], scenes.STYLES[style]["sizes"]
  for seed in range(60):
    image, scene = scenes.make_scene(seed, style=style)
    assert scene.get("style", scenes.DEFAULT_STYLE) == style
    assert scenes.style_of(scene) is scenes.STYLES[style]
    objs = scene["objects"]
    for o in objs:
      assert o["shape"] in shapes and o["radius"] == round(sizes[o["size"]] * scene["size"] / 3, 2)
    assert scenes.MIN_OBJECTS <= len(objs) <= scenes.MAX_OBJECTS
    assert len({(o["row"], o["col"]) for o in objs}) == len(objs)  # one object per cell
    assert len({(o["colour"], o["shape"]) for o in objs}) == len(objs)  # names are unique
    px = np.asarray(image)
    for o in objs:
      # every shape covers its centre; solid objects have their colour there
      if o["texture"] == "solid":
        assert tuple(px[int(o["cy"]), int(o["cx"])]) == scenes.COLOURS[o["colour"]], (seed, o)
      # the object stays inside its grid cell, 2 px from its edges
      cell = scene["size"] / 3
      for c, i in ((o["cx"], o["col"]), (o["cy"], o["row"])):
        assert i * cell + 1.9 <= c - o["radius"] and c + o["radius"] <= (i + 1) * cell - 1.9
      kinds.add(o["texture"])
    # the rest is background
    bg = np.array(scenes.BACKGROUNDS[scene["background"]])
    assert 0.4 < (px == bg).all(-1).mean() < 1
  assert kinds == set(scenes.TEXTURES)
  assert scenes.make_scene(3, size=112, style=style)[0].size == (112, 112)


def test_styles():
  """The default style draws the classic scenes (no "style" key: what the shipped models were
  trained on); "bold" the same layout with bigger objects and no hexagon; unknown ones fail."""
  classic, bold = scenes.random_scene(5), scenes.random_scene(5, style="bold")
  assert "style" not in classic and bold["style"] == "bold"
  assert [(o["row"], o["col"]) for o in classic["objects"]] == [
      (o["row"], o["col"]) for o in bold["objects"]]
  assert scenes.random_scene(5, style="classic") == classic
  for seed in range(40):
    ex = scenes.sample(seed, style="bold")
    assert "hexagon" not in ex["question"] + ex["answer"]
  assert min(scenes.STYLES["bold"]["sizes"].values()) > max(scenes.SIZES.values()) / 2
  with pytest.raises(ValueError, match="unknown scene style 'neon'"):
    scenes.make_scene(1, style="neon")


@pytest.mark.parametrize("style", sorted(scenes.STYLES))
def test_inventory_answers_are_short_and_name_every_object(tokenizer, style):
  lengths = scenes.answer_lengths(tokenizer, HELD_OUT, kinds=scenes.SHORT_KINDS, style=style)
  assert 30 <= min(lengths["inventory"]) and max(lengths["inventory"]) <= 100, lengths
  for seed in HELD_OUT[:20]:
    ex = scenes.sample(seed, kind="inventory", style=style)
    assert ex["question"] in scenes.QUESTIONS["inventory"]
    for o in ex["scene"]["objects"]:
      assert f"{o['size']} {o['colour']} {o['shape']}, {o['texture']}." in ex["answer"]
  assert "inventory" not in scenes.KINDS  # not in the default mix: the shipped data is unchanged


@pytest.mark.parametrize("style", sorted(scenes.STYLES))
def test_answers_are_long(tokenizer, style):
  assert 500 < len(tokenizer) <= 2048
  lengths = scenes.answer_lengths(tokenizer, HELD_OUT, style=style)
  for kind, v in lengths.items():
    assert min(v) >= 300, (kind, min(v))
    assert max(v) < 700, (kind, max(v))


def test_listed_answers_list_every_object_after_the_introduction(tokenizer):
  """listing "inventory" (TFDS config bold_listed): every long kind's answer states each object as
  the inventory does, right after the introduction and in place of the object sentences; the
  rest of the answer is the default listing's sections; the answers stay long."""
  for kind in scenes.KINDS:
    names = [fn.__name__ for fn in scenes.sections(kind, "inventory")]
    default = [fn.__name__ for fn in scenes.sections(kind)]
    assert names[:2] == ["s_intro", "s_inventory"], (kind, names)
    assert names[2:] == [n for n in default[1:] if n != "s_objects"], (kind, names, default)
  assert scenes.sections("inventory", "inventory") == scenes.sections("inventory")
  for seed in HELD_OUT[:20]:
    kind = scenes.KINDS[seed % len(scenes.KINDS)]
    ex = scenes.sample(seed, kind=kind, style="bold", listing="inventory")
    inventory = scenes.sample(seed, kind="inventory", style="bold")["answer"]
    assert inventory in ex["answer"], (seed, kind)
    assert ex["question"] == scenes.sample(seed, kind=kind, style="bold")["question"]
  lengths = scenes.answer_lengths(tokenizer, HELD_OUT, style="bold", listing="inventory")
  for kind, v in lengths.items():
    assert 300 <= min(v) and max(v) < 700, (kind, min(v), max(v))
  with pytest.raises(ValueError, match="unknown listing"):
    scenes.sections("describe", "table")


def test_answer_depends_on_image_not_question():
  checked = 0
  for seed in range(40):
    a, b = scenes.random_scene(seed), scenes.random_scene(seed + 1000)
    for kind in scenes.KINDS:
      qa, aa = scenes.describe(a, kind, np.random.default_rng(seed))
      qb, ab = scenes.describe(b, kind, np.random.default_rng(seed))
      assert qa == qb  # the same question (drawn from rng only) ...
      assert aa != ab  # ... gets another answer for another picture
      checked += 1
    # and the answer names what is in the picture
    _, text = scenes.describe(a, "describe", np.random.default_rng(0))
    for o in a["objects"]:
      assert f"{o['size']} {o['colour']} {o['shape']}" in text
      assert scenes.cell_name(o["row"], o["col"]) in text
    assert f"{scenes.NUMBERS[len(a['objects'])]} " in text
  assert checked == 240


def test_question_never_mentions_scene_content():
  # questions depend only on the rng: the same rng gives the same question for any scene
  for kind in scenes.KINDS:
    qs = {scenes.describe(scenes.random_scene(s), kind, np.random.default_rng(5))[0]
          for s in range(20)}
    assert len(qs) == 1
  for seed in range(20):
    ex = scenes.sample(seed)
    assert ex["question"] in {q.format(colour=c, shape=s) for qq in scenes.QUESTIONS.values()
                              for q in qq for c in scenes.COLOURS for s in scenes.SHAPES}
  with pytest.raises(ValueError, match="unknown question kind"):
    scenes.describe(scenes.random_scene(0), "nope", np.random.default_rng(0))


def test_colour_question_answer(tokenizer):
  scene = scenes.random_scene(4)
  present = {o["colour"] for o in scene["objects"]}
  for seed in range(30):
    q, a = scenes.describe(scene, "colour", np.random.default_rng(seed))
    colour = next(c for c in scenes.COLOURS if f" {c} " in q)
    assert a.startswith("Yes" if colour in present else "No"), (q, a[:80])


def test_tokenizer_roundtrip_and_chat_template(tokenizer, tmp_path):
  from transformers import PreTrainedTokenizerFast
  out = tmp_path / "tok"
  scenes.save_tokenizer(tokenizer, str(out))
  scenes.save_tokenizer(tokenizer, str(out))  # replacing an existing one
  assert sorted(os.listdir(tmp_path)) == ["tok"]  # no temporary folders left
  tok = PreTrainedTokenizerFast.from_pretrained(str(out))
  assert len(tok) == len(tokenizer)
  for t in SPECIAL_TOKENS:
    assert len(tok(t)["input_ids"]) == 1, t
  assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
  ex = scenes.sample(10_000_001)
  for text in (ex["question"], ex["answer"], "Unseen text: naïve café, 1000 words! 🙂"):
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text
  messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": ex["question"]}]}]
  text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
  assert text == (f"<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{ex['question']}"
                  "<|im_end|>\n<|im_start|>assistant\n")
  ids = tok(text)["input_ids"]
  assert ids.count(tok.convert_tokens_to_ids("<|image_pad|>")) == 1
  assert tok.decode(ids) == text


def test_tokenizer_cli(tmp_path):
  out = tmp_path / "cli_tok"
  assert scenes.main(["tokenizer", "--out", str(out), "--samples", "10", "--vocab-size", "1024"]) == 0
  assert (out / "tokenizer.json").is_file() and (out / "tokenizer_config.json").is_file()
  cfg = json.loads((out / "tokenizer_config.json").read_text())
  chat = cfg.get("chat_template") or (out / "chat_template.jinja").read_text()
  assert "<|image_pad|>" in chat


def test_tfds_build_and_read(tmp_path):
  import grain
  import tensorflow_datasets as tfds

  from proj.scenes import tfds_builder as scenes_tfds
  data_dir = str(tmp_path / "tfds")
  assert scenes_tfds.main(["--data-dir", data_dir, "--train", "8", "--validation", "4",
                           "--test", "0"]) == 0
  train = tfds.data_source(scenes_tfds.NAME, split="train", data_dir=data_dir)
  val = tfds.data_source(scenes_tfds.NAME, split="validation", data_dir=data_dir)
  assert (len(train), len(val)) == (8, 4)
  seeds = []
  for src, base in ((train, 0), (val, scenes.SPLIT_SEEDS["validation"])):
    for i in range(len(src)):
      ex = src[i]
      assert ex["image"].dtype == np.uint8 and ex["image"].shape == (224, 224, 3)
      assert int(ex["seed"]) == base + i
      ref = scenes.sample(int(ex["seed"]))
      assert np.array_equal(ex["image"], np.asarray(ref["image"]))
      assert scenes_tfds.decode_text(ex["question"]) == ref["question"]
      assert scenes_tfds.decode_text(ex["answer"]) == ref["answer"]
      assert scenes_tfds.decode_text(ex["kind"]) == ref["kind"]
      assert json.loads(scenes_tfds.decode_text(ex["scene"])) == ref["scene"]
      seeds.append(int(ex["seed"]))
  assert len(set(seeds)) == 12
  meta = tfds.builder(scenes_tfds.NAME, data_dir=data_dir).info.metadata
  assert meta["image_size"] == 224 and meta["split_seeds"]["validation"] == 100_000_000

  # grain: random access, shuffled, mapped
  ds = (grain.MapDataset.source(train).shuffle(seed=0)
        .map(lambda e: (int(e["seed"]), scenes_tfds.decode_text(e["answer"]))))
  got = [ds[i] for i in range(len(ds))]
  assert sorted(s for s, _ in got) == list(range(8))
  assert all(a == scenes.sample(s)["answer"] for s, a in got)

  # building again finds the dataset and does not rebuild it
  mtime = os.path.getmtime(os.path.join(data_dir, scenes_tfds.NAME, "default", "1.0.0",
                                        "dataset_info.json"))
  scenes_tfds.build(data_dir, train=8, validation=4, test=0)
  assert mtime == os.path.getmtime(os.path.join(data_dir, scenes_tfds.NAME, "default", "1.0.0",
                                                "dataset_info.json"))


def test_tfds_bold_inventory_config(tmp_path):
  """The stage-1 build (--config bold_inventory): bold scenes with inventory answers, the style
  in the metadata; the default build's metadata has no style key."""
  import tensorflow_datasets as tfds

  from proj.scenes import tfds_builder as scenes_tfds
  data_dir = str(tmp_path / "tfds")
  assert scenes_tfds.main(["--data-dir", data_dir, "--config", "bold_inventory", "--train", "3",
                           "--validation", "2", "--test", "0"]) == 0
  src = tfds.data_source(f"{scenes_tfds.NAME}/bold_inventory", split="validation",
                         data_dir=data_dir)
  for i in range(len(src)):
    ref = scenes.sample(scenes.SPLIT_SEEDS["validation"] + i, kinds=["inventory"],
                        style="bold")
    assert scenes_tfds.decode_text(src[i]["answer"]) == ref["answer"]
    assert np.array_equal(src[i]["image"], np.asarray(ref["image"]))
    assert json.loads(scenes_tfds.decode_text(src[i]["scene"]))["style"] == "bold"
  meta = tfds.builder(f"{scenes_tfds.NAME}/bold_inventory", data_dir=data_dir).info.metadata
  assert meta["style"] == "bold" and meta["kinds"] == ["inventory"]


def test_tfds_bold_listed_config(tmp_path):
  """--config bold_listed: bold scenes whose long answers list the objects as inventories (the
  listing in the metadata)."""
  import tensorflow_datasets as tfds

  from proj.scenes import tfds_builder as scenes_tfds
  data_dir = str(tmp_path / "tfds")
  assert scenes_tfds.main(["--data-dir", data_dir, "--config", "bold_listed", "--train", "2",
                           "--validation", "3", "--test", "0"]) == 0
  src = tfds.data_source(f"{scenes_tfds.NAME}/bold_listed", split="validation", data_dir=data_dir)
  for i in range(len(src)):
    ref = scenes.sample(scenes.SPLIT_SEEDS["validation"] + i, style="bold", listing="inventory")
    assert scenes_tfds.decode_text(src[i]["answer"]) == ref["answer"]
    assert scenes_tfds.decode_text(src[i]["question"]) == ref["question"]
  meta = tfds.builder(f"{scenes_tfds.NAME}/bold_listed", data_dir=data_dir).info.metadata
  assert meta["style"] == "bold" and meta["listing"] == "inventory"
