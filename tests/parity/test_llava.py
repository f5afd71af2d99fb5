"""LLaVA-1.5 and LLaVA-NeXT parity against transformers' PyTorch models (fp32, tiny random configs
saved with `save_pretrained` and loaded through `vj.load_target`)."""

import json

import numpy as np
import pytest
import torch

import vispec_jax as vj
from vispec_jax import testing
from vispec_jax.models import llava

from .hf_reference import assert_same_greedy

TOL = 1e-4
FAMILIES = ["llava", "llava_next"]


def build_hf_llava(folder, *, next=False, init_range=0.2, **kwargs):  # pylint: disable=redefined-builtin
  """Writes a random transformers LLaVA(-NeXT) with `save_pretrained` (larger init than default,
  so logits vary), plus our tiny tokenizer and processor config; returns the torch model."""
  from transformers import (LlavaConfig, LlavaForConditionalGeneration, LlavaNextConfig,
                            LlavaNextForConditionalGeneration)
  tok = testing.tiny_llava_tokenizer()
  raw = testing.tiny_llava_config(tok, next=next, **kwargs)
  for d in (raw, raw["text_config"], raw["vision_config"]):
    d["initializer_range"] = init_range
  config_cls, model_cls = ((LlavaNextConfig, LlavaNextForConditionalGeneration) if next
                           else (LlavaConfig, LlavaForConditionalGeneration))
  cfg = config_cls(**{k: v for k, v in raw.items() if k not in ("architectures", "model_type")})
  torch.manual_seed(0)
  model = model_cls(cfg).eval()
  model.save_pretrained(folder)
  tok.save_pretrained(folder)
  with open(f"{folder}/preprocessor_config.json", "w") as f:
    json.dump(testing.llava_preprocessor_config(raw), f)
  return model


def hf_inputs(batch, cfg, rows, positions=True):
  """transformers kwargs for the given rows of one of our Batches (left padding kept)."""
  kw = {"input_ids": torch.tensor(batch.input_ids[rows]).long(),
        "attention_mask": torch.tensor(batch.attention_mask[rows]).long()}
  if positions:
    kw["position_ids"] = torch.tensor(batch.positions[rows]).long()
  per_row, k = [], 0
  for r in range(batch.batch_size):
    n = int(np.sum(batch.vision_index[r] >= 0))
    items = []
    while n > 0:
      items.append(batch.vision[k]); n -= batch.vision[k].num_tokens; k += 1
    per_row.append(items)
  items = [it for r in rows for it in per_row[r]]
  if not items:
    return kw
  if cfg.vision.grid_pinpoints is not None:
    tiles = max(len(it.patches) for it in items)  # LLaVA-NeXT: [images, tiles (padded), C, S, S]
    px = np.zeros((len(items), tiles) + items[0].patches.shape[1:], np.float32)
    for i, it in enumerate(items):
      px[i, :len(it.patches)] = it.patches
    kw["pixel_values"] = torch.tensor(px)
    kw["image_sizes"] = torch.tensor([it.layout.image_size for it in items])
  else:
    kw["pixel_values"] = torch.tensor(np.concatenate([it.patches for it in items]))
  return kw


@pytest.fixture(scope="module", params=FAMILIES)
def loaded(request, tmp_path_factory):
  folder = str(tmp_path_factory.mktemp(request.param))
  model = build_hf_llava(folder, next=request.param == "llava_next")
  return vj.load_target(folder), model


CASES = {
    "text": dict(prompts=["What colour is the square?"]),
    "one_image": dict(prompts=["Describe the image."], images=[[testing.scene_image(112, 84)]]),
    "two_images": dict(prompts=["Compare <image> with <image> please."],
                       images=[[testing.scene_image(112, 84, 1), testing.scene_image(40, 150, 2)]]),
}


def _check_logits(target, model, batch):
  logits, _ = target.forward(target.params, batch)
  with torch.no_grad():
    ref = model(**hf_inputs(batch, target.config, [0])).logits[0].numpy()
  valid = batch.attention_mask[0]
  ours, ref = np.asarray(logits[0])[valid], ref[valid]
  assert np.abs(ref).max() > 0.5, "logits too small for a meaningful comparison"
  np.testing.assert_allclose(ours, ref, atol=TOL, rtol=0)
  return float(np.abs(ours - ref).max())


@pytest.mark.parity
@pytest.mark.parametrize("case", list(CASES))
def test_logits_match_transformers(loaded, case):
  target, model = loaded
  spec = CASES[case]
  batch = vj.prepare(target, spec["prompts"], images=spec.get("images"))
  n_images = len((spec.get("images") or [[]])[0])
  assert len(batch.vision) == n_images
  assert int((batch.input_ids == target.config.image_token_id).sum()) == sum(
      it.num_tokens for it in batch.vision)
  _check_logits(target, model, batch)


@pytest.mark.parity
def test_images_change_logits(loaded):
  """The image path is live: another picture changes the logits after the image tokens."""
  target, _ = loaded
  a = vj.prepare(target, ["Describe."], images=[[testing.scene_image(112, 84, 1)]])
  b = vj.prepare(target, ["Describe."], images=[[testing.scene_image(112, 84, 9)]])
  la, lb = (np.asarray(target.forward(target.params, x)[0][0, -1]) for x in (a, b))
  assert np.abs(la - lb).max() > 0.1


@pytest.mark.parity
@pytest.mark.parametrize("rows", [[0], [0, 1]], ids=["batch1", "batch2"])
def test_greedy_tokens_match_transformers(loaded, rows):
  target, model = loaded
  prompts = ["How many circles are there in <image> and <image>?", "What colour is the square?"]
  images = [[testing.scene_image(56, 56, 4), testing.scene_image(84, 140, 5)], []]
  if len(rows) == 2:  # both rows with images, of different token counts
    images[1] = [testing.scene_image(150, 40, 6)]
  batch = vj.prepare(target, [prompts[r] for r in rows], images=[images[r] for r in rows])
  out = vj.trim(vj.generate(target, batch, max_new_tokens=32))
  with torch.no_grad():  # transformers derives positions from the attention mask when generating
    ref = model.generate(**hf_inputs(batch, target.config, list(range(len(rows))), positions=False),
                         max_new_tokens=32, do_sample=False)
  assert_same_greedy(out, ref.numpy(), batch.input_ids.shape[1], target.config.eos_token_ids)


SIZES = [(84, 112), (140, 56), (40, 150), (150, 40), (28, 28), (301, 300), (90, 17), (1, 200),
         (57, 113), (113, 57), (84, 84)]


@pytest.mark.parity
def test_anyres_packing_order_matches_transformers(loaded):
  """Our host index reproduces `pack_image_features` token for token: feed transformers feature
  rows that encode their own (tile, patch) index and an image_newline of -1."""
  target, model = loaded
  v = target.config.vision
  if v.grid_pinpoints is None:
    pytest.skip("LLaVA-1.5 has no anyres packing")
  from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches
  tok = llava.tokens_per_tile(v)
  for size in SIZES:
    n_tiles = image_size_to_num_patches(list(size), [list(p) for p in v.grid_pinpoints],
                                        v.clip.image_size)
    feats = torch.arange(n_tiles * tok, dtype=torch.float64).reshape(n_tiles, tok, 1)
    packed, lens = model.model.pack_image_features(
        [feats], torch.tensor([size]), "default", image_newline=torch.tensor([-1.0], dtype=torch.float64))
    ours = llava.anyres_index(size, v)
    np.testing.assert_array_equal(ours, packed[0][:, 0].numpy().astype(np.int64), err_msg=str(size))
    assert int(lens[0]) == len(ours) == llava.num_image_tokens(size, v)
    assert llava.tile_grid(size, v)[0] * llava.tile_grid(size, v)[1] + 1 == n_tiles


@pytest.mark.parity
def test_full_strategy_layer_list_tied(tmp_path):
  """LLaVA-1.5 variants: CLS kept ("full"), two feature layers concatenated, tied lm_head."""
  model = build_hf_llava(str(tmp_path), strategy="full", feature_layer=[-3, -1], tie=True)
  target = vj.load_target(str(tmp_path))
  assert "lm_head" not in target.params["text"]
  batch = vj.prepare(target, ["Compare <image> with <image> please."],
                     images=[[testing.scene_image(112, 84, 1), testing.scene_image(40, 150, 2)]])
  assert [it.num_tokens for it in batch.vision] == [17, 17]  # 4x4 patches + CLS
  _check_logits(target, model, batch)
