"""LLaVA-1.5 / LLaVA-NeXT without torch: loading, key spellings, prompts and image token counts
against transformers' processors, and one clear error per bad input or checkpoint."""

import json
import os

import jax
import numpy as np
import pytest

import vispec_jax as vj
from tests.folders import copy_folder, edit_config, rewrite_tensors
from vispec_jax import checkpoints, testing
from vispec_jax.models import llava

FAMILIES = ["llava", "llava_next"]


@pytest.fixture(scope="module", params=FAMILIES)
def tiny_dir(request, tmp_path_factory):
  folder = str(tmp_path_factory.mktemp(request.param))
  return testing.make_tiny_llava(folder, next=request.param == "llava_next")


@pytest.fixture(scope="module")
def target(tiny_dir):
  return vj.load_target(tiny_dir)


def test_loads_and_generates(target):
  assert target.config.family in FAMILIES
  assert target.config.text.mrope_section is None and not target.config.text.qkv_bias
  batch = vj.prepare(target, ["Compare <image> with <image>.", "Hello there."],
                     images=[[testing.scene_image(112, 84), testing.scene_image(40, 150, 2)], []])
  assert batch.positions.shape == batch.input_ids.shape  # 1-D positions [B, P]
  valid = batch.attention_mask[1]
  np.testing.assert_array_equal(batch.positions[1][valid], np.arange(valid.sum()))
  assert list(batch.next_position) == list(batch.prompt_lengths)
  logits, _ = target.forward(target.params, batch)
  assert np.isfinite(np.asarray(logits)).all()
  out = vj.generate(target, batch, max_new_tokens=5)
  assert np.asarray(out.tokens).shape == (2, 5)


def test_round_trip_is_exact(tiny_dir, target, tmp_path):
  out = str(tmp_path / "model.safetensors")
  checkpoints.save_hf(target.params, target.family.name_map(target.config), out)
  a, b = (checkpoints.SafetensorsFile(p) for p in (os.path.join(tiny_dir, "model.safetensors"), out))
  unused = {"vision_tower.post_layernorm.weight", "vision_tower.post_layernorm.bias"}
  assert sorted(set(a.keys()) - unused) == sorted(b.keys())
  for k in b.keys():
    np.testing.assert_array_equal(a.get(k), b.get(k), err_msg=k)


SPELLINGS = {
    # transformers 5 in-memory module names
    "in_memory": [("language_model.model.", "model.language_model."),
                  ("language_model.lm_head.", "lm_head."),
                  ("vision_tower.", "model.vision_tower."),
                  ("multi_modal_projector.", "model.multi_modal_projector."),
                  ("image_newline", "model.image_newline")],
    # hub checkpoints written by transformers 4 (CLIPVisionModel kept its `vision_model`)
    "hub_v4": [("vision_tower.", "vision_tower.vision_model.")],
}


@pytest.mark.parametrize("spelling", list(SPELLINGS))
def test_other_key_spellings_load(tiny_dir, target, tmp_path, spelling):
  folder = copy_folder(tiny_dir, tmp_path / "m")
  def rename(t):
    for k in list(t):
      for old, new in SPELLINGS[spelling]:
        if k.startswith(old):
          t[new + k[len(old):]] = t.pop(k)
          break
  rewrite_tensors(folder, rename)
  other = vj.load_target(folder)
  for x, y in zip(jax.tree.leaves(target.params), jax.tree.leaves(other.params)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_select_best_resolution_matches_transformers():
  from transformers.image_processing_utils import select_best_resolution
  rng = np.random.default_rng(0)
  pinpoints = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
  for _ in range(300):
    size = tuple(int(x) for x in rng.integers(1, 1500, 2))
    assert llava.select_best_resolution(size, pinpoints) == tuple(select_best_resolution(size, pinpoints))


SIZES = [(112, 84), (56, 140), (40, 150), (150, 40), (28, 28), (300, 301), (17, 90), (200, 2),
         (113, 57)]  # (width, height)


def _hf_processor(target):
  from transformers import LlavaNextProcessor, LlavaProcessor
  cls = LlavaNextProcessor if target.config.vision.grid_pinpoints is not None else LlavaProcessor
  return cls(image_processor=target.image_processor, tokenizer=target.tokenizer,
             patch_size=target.config.vision.clip.patch_size,
             vision_feature_select_strategy="default", num_additional_image_tokens=1)


@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
def test_image_tokens_and_pixels_match_transformers_processor(target, size):
  """Token ids (image token count and place, BOS) and pixels equal transformers' processor."""
  proc = _hf_processor(target)
  images = [testing.scene_image(*size, seed=3), testing.scene_image(84, 56, seed=4)]
  prompt = "Compare <image> with <image> please."
  batch = vj.prepare(target, [prompt], images=[images], chat=False)
  ref = proc(text=prompt, images=images, return_tensors="np")
  ours = batch.input_ids[0][batch.attention_mask[0]]
  np.testing.assert_array_equal(ours, ref["input_ids"][0])
  ref_px = ref["pixel_values"]
  for i, it in enumerate(batch.vision):
    px = ref_px[i][:len(it.patches)] if ref_px.ndim == 5 else ref_px[i:i + 1]
    np.testing.assert_allclose(it.patches, px, atol=1e-6)
    if ref_px.ndim == 5:  # NeXT: the rest of the processor's tile axis is batch padding
      assert not ref_px[i][len(it.patches):].any()
      assert it.layout.image_size == tuple(ref["image_sizes"][i])


def test_chat_template_and_bos(target):
  batch = vj.prepare(target, ["What is <image>?"], images=[[testing.scene_image(56, 56)]])
  ids = batch.input_ids[0][batch.attention_mask[0]].tolist()
  tok = target.tokenizer
  assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
  text = tok.decode([t for t in ids if t != target.config.image_token_id])
  assert text.startswith("<s>USER: What is \n") and text.endswith("ASSISTANT:")


def test_several_images_one_tower_call(target):
  """Tiles of all images are encoded in one call; each image gets its own token run."""
  imgs = [testing.scene_image(112, 84, 1), testing.scene_image(40, 150, 2), testing.scene_image(56, 56, 3)]
  batch = vj.prepare(target, ["<image> <image> <image> compare"], images=[imgs])
  feats = target.family.encode_vision(target.params["vision"], target.config.vision, batch.vision)
  assert [f.shape[0] for f in feats] == [it.num_tokens for it in batch.vision]
  single = target.family.encode_vision(target.params["vision"], target.config.vision, batch.vision[1:2])
  np.testing.assert_allclose(np.asarray(feats[1]), np.asarray(single[0]), atol=1e-5)


# ---------------------------------------------------------------------------- errors


def test_image_count_must_match_markers(target):
  img = testing.scene_image(56, 56)
  with pytest.raises(vj.InputError, match="2 <image> markers but 1"):
    vj.prepare(target, ["<image> and <image>"], images=[[img]])
  with pytest.raises(vj.InputError, match="1 <image> markers but 2"):
    vj.prepare(target, ["<image> only"], images=[[img, img]])


def test_videos_are_refused(target):
  with pytest.raises(vj.InputError, match="does not take videos"):
    vj.prepare(target, ["What happens?"], videos=[[[testing.scene_image(56, 56)]]])


@pytest.mark.parametrize("pinpoints", [[[28, 42]], [[30, 60], [56, 56]], [[0, 28]]])
def test_pinpoints_must_be_multiples_of_image_size(tmp_path, pinpoints):
  folder = testing.make_tiny_llava(str(tmp_path / "m"), next=True)
  edit_config(folder, lambda raw: raw.update(image_grid_pinpoints=pinpoints))
  with pytest.raises(vj.ConfigError, match="not positive multiples of the vision image_size 28"):
    vj.load_target(folder)


@pytest.mark.parametrize("edit,fragment", [
    (lambda raw: raw["text_config"].update(model_type="gpt2"), "text_config.model_type 'gpt2'"),
    (lambda raw: raw["vision_config"].update(model_type="siglip_vision_model"), "CLIP tower"),
    (lambda raw: raw.update(vision_feature_layer=-9), "vision_feature_layer"),
    (lambda raw: raw.update(vision_feature_select_strategy="cls"), "vision_feature_select_strategy"),
    (lambda raw: raw.update(projector_hidden_act="swish2"), "projector_hidden_act"),
    (lambda raw: raw["text_config"].update(rope_parameters={"rope_type": "llama3", "rope_theta": 1e4}),
     "rope_type 'llama3'"),
], ids=["text_type", "vision_type", "feature_layer", "strategy", "act", "rope"])
def test_bad_config(tiny_dir, tmp_path, edit, fragment):
  folder = copy_folder(tiny_dir, tmp_path / "m")
  edit_config(folder, edit)
  with pytest.raises(vj.ConfigError, match=fragment):
    vj.load_target(folder)


def test_next_needs_default_strategy():
  raw = testing.tiny_llava_config(testing.tiny_llava_tokenizer(), next=True, strategy="full")
  with pytest.raises(vj.ConfigError, match="LLaVA-NeXT needs"):
    vj.models.config_from_hf(raw)


def test_missing_tensor_is_named(tiny_dir, tmp_path):
  folder = copy_folder(tiny_dir, tmp_path / "m")
  names = ["multi_modal_projector.linear_2.weight", "vision_tower.pre_layrnorm.bias"]
  if "llava_next" in tiny_dir:
    names.append("image_newline")
  rewrite_tensors(folder, lambda t: [t.pop(n) for n in names])
  with pytest.raises(vj.CheckpointError) as e:
    vj.load_target(folder)
  for n in names:
    assert n in str(e.value)


def test_processor_tile_size_must_match_tower(tiny_dir, tmp_path):
  folder = copy_folder(tiny_dir, tmp_path / "m")
  path = os.path.join(folder, "preprocessor_config.json")
  with open(path) as f:
    raw = json.load(f)
  raw["size"], raw["crop_size"] = {"shortest_edge": 42}, {"height": 42, "width": 42}
  with open(path, "w") as f:
    json.dump(raw, f)
  target = vj.load_target(folder)
  if target.config.vision.grid_pinpoints is not None:
    pytest.skip("LLaVA-NeXT tiles at the pinpoint grid; only the base tile uses `size`")
  with pytest.raises(vj.ConfigError, match="42x42 tiles but the vision tower takes 28x28"):
    vj.prepare(target, ["What?"], images=[[testing.scene_image(56, 56)]])
