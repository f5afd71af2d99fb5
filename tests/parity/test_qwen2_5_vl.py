"""Qwen2.5-VL parity against transformers' PyTorch model (fp32, tiny random configs)."""

import numpy as np
import pytest
import torch

import vispec_jax as vj
from vispec_jax import testing

from .hf_reference import assert_same_greedy, build_hf_qwen, hf_inputs

TOL = 1e-4


def _frames(n, w=84, h=56):
  return [testing.scene_image(w, h, seed=10 + i) for i in range(n)]


CASES = {
    "text": dict(prompts=["What colour is the square?"]),
    "one_image": dict(prompts=["Describe the image."], images=[[testing.scene_image(112, 84)]]),
    "two_images": dict(prompts=["Compare <image> with <image> please."],
                       images=[[testing.scene_image(112, 84, 1), testing.scene_image(56, 140, 2)]]),
    "video": dict(prompts=["What happens in the video?"], videos=[[_frames(4)]]),
    "image_and_video": dict(prompts=["Describe."], images=[[testing.scene_image(84, 84, 3)]],
                            videos=[[_frames(3)]]),
}


@pytest.fixture(scope="module")
def loaded(hf_qwen):
  folder, model = hf_qwen
  return vj.load_target(folder), model


@pytest.mark.parity
@pytest.mark.parametrize("case", list(CASES))
def test_logits_match_transformers(loaded, case):
  target, model = loaded
  spec = CASES[case]
  batch = vj.prepare(target, spec["prompts"], images=spec.get("images"), videos=spec.get("videos"))
  logits, _ = target.forward(target.params, batch)
  model.model.rope_deltas = None
  with torch.no_grad():
    ref = model(**hf_inputs(batch, target.config, [0])).logits[0].numpy()
  valid = batch.attention_mask[0]
  ours = np.asarray(logits[0])[valid]
  ref = ref[valid]
  assert np.abs(ref).max() > 0.5, "logits too small for a meaningful comparison"
  np.testing.assert_allclose(ours, ref, atol=TOL, rtol=0)
  if case != "text":  # the reference really used 3-D positions (a 1-D fallback has delta 0)
    assert model.model.rope_deltas is not None and int(model.model.rope_deltas.abs().sum()) > 0
    pos = batch.positions[:, 0][:, valid]
    assert not np.array_equal(pos[0], pos[1]), "our positions are not 3-D either"


@pytest.mark.parity
@pytest.mark.parametrize("rows", [[0], [0, 1, 2]], ids=["batch1", "batch3"])
def test_greedy_tokens_match_transformers(loaded, rows):
  target, model = loaded
  prompts = ["Describe the image.", "What colour is the square? Answer briefly.",
             "How many circles are there in <image> and <image>?"]
  images = [[testing.scene_image(112, 84)], [], [testing.scene_image(56, 56, 4),
                                                 testing.scene_image(84, 140, 5)]]
  batch = vj.prepare(target, [prompts[r] for r in rows], images=[images[r] for r in rows])
  out = vj.trim(vj.generate(target, batch, max_new_tokens=32))
  model.model.rope_deltas = None
  kw = hf_inputs(batch, target.config, list(range(len(rows))))
  with torch.no_grad():
    ref = model.generate(**kw, max_new_tokens=32, do_sample=False)
  assert_same_greedy(out, ref.numpy(), batch.input_ids.shape[1], target.config.eos_token_ids)


@pytest.mark.parity
def test_sharded_bf16_checkpoint_loads(tmp_path):
  model = build_hf_qwen(str(tmp_path), dtype=torch.bfloat16, shard="100KB")
  files = sorted(p.name for p in tmp_path.iterdir())
  assert "model.safetensors.index.json" in files
  target = vj.load_target(str(tmp_path))  # cast to fp32
  ref = model.model.language_model.layers[1].mlp.down_proj.weight.detach().float().numpy().T
  np.testing.assert_array_equal(np.asarray(target.params["text"]["layers"][1]["mlp"]["down"]["kernel"]), ref)
  bf16 = vj.load_target(str(tmp_path), dtype=jax_bf16())
  assert bf16.params["text"]["embed"].dtype == jax_bf16()


def jax_bf16():
  import jax.numpy as jnp
  return jnp.bfloat16


@pytest.mark.parity
def test_tied_lm_head(tmp_path):
  model = build_hf_qwen(str(tmp_path), tie=True)
  target = vj.load_target(str(tmp_path))
  assert "lm_head" not in target.params["text"]
  batch = vj.prepare(target, ["Hello there."])
  logits, _ = target.forward(target.params, batch)
  with torch.no_grad():
    ref = model(**hf_inputs(batch, target.config, [0])).logits[0].numpy()
  valid = batch.attention_mask[0]
  np.testing.assert_allclose(np.asarray(logits[0])[valid], ref[valid], atol=TOL, rtol=0)


@pytest.mark.parity
def test_rope_index_matches_transformers(loaded):
  """Our NumPy get_rope_index against transformers' on text, images and video runs."""
  target, model = loaded
  spec = CASES["image_and_video"]
  batch = vj.prepare(target, ["A <image> then more text"] * 1, images=[[testing.scene_image(140, 56)]])
  for b in (batch, vj.prepare(target, spec["prompts"], images=spec["images"], videos=spec["videos"])):
    kw = hf_inputs(b, target.config, [0])
    pos, deltas = model.model.get_rope_index(
        kw["input_ids"], kw["mm_token_type_ids"], image_grid_thw=kw.get("image_grid_thw"),
        video_grid_thw=kw.get("video_grid_thw"), second_per_grid_ts=kw.get("second_per_grid_ts"),
        attention_mask=kw["attention_mask"])
    valid = b.attention_mask[0]
    np.testing.assert_array_equal(b.positions[:, 0][:, valid], pos[:, 0].numpy()[:, valid])
    assert int(b.next_position[0]) == int(valid.sum()) + int(deltas[0, 0])
