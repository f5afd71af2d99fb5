"""Drafters in the speculative engine: ViSpec (loaded from an official-layout checkpoint), EAGLE
and Medusa, with random weights, give exactly vj.generate's greedy tokens on a batch with a
two-image prompt and a text-only prompt, with dynamic and static trees."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vispec_jax as vj
from vispec_jax import draft, layers, testing
from vispec_jax.draft.vispec import image_runs

from tests.test_draft import official_config, official_state_dict, write_official

TREES = {"dynamic": vj.TreeConfig(depth=2, top_k=3, total_tokens=8),
         "static": vj.TreeConfig(paths=((0,), (1,), (0, 0), (1, 0), (0, 0, 0)))}
MAX_NEW = 10


@pytest.fixture(scope="module")
def setup(tiny_qwen_dir, tmp_path_factory):
  target = vj.load_target(tiny_qwen_dir)
  target = dataclasses.replace(target, config=dataclasses.replace(target.config, eos_token_ids=()))
  batch = vj.prepare(target, ["Compare the two pictures.", "What colour is the square?"],
                     images=[[testing.scene_image(112, 84), testing.scene_image(56, 56, 2)], []])
  embeds = target.embed(target.params, batch)
  ref = np.asarray(vj.generate(target, batch, MAX_NEW).tokens)
  return target, batch, embeds, ref


@pytest.fixture(scope="module")
def drafts(setup, tmp_path_factory):
  target = setup[0]
  t = target.config.text
  sd = official_state_dict(seed=3, h=t.hidden_size, v=t.vocab_size)
  sd["embed_tokens.weight"] = np.asarray(target.params["text"]["embed"])
  raw = official_config(hidden_size=t.hidden_size, vocab_size=t.vocab_size,
                        num_attention_heads=t.num_heads, num_key_value_heads=t.num_heads)
  vispec = vj.load_draft(write_official(tmp_path_factory.mktemp("vispec"), sd, raw), target)
  out = {"vispec": (vispec.drafter, vispec.params)}
  for kind, std in (("eagle", 0.1), ("medusa", 0.1)):
    cfg = draft.DraftConfig.for_target(t, kind=kind)
    params = layers.init_params(draft.param_shapes(cfg), jax.random.PRNGKey(5), std=std)
    out[kind] = (vj.make_drafter(cfg), params)
  return out


def test_vispec_prefill_sees_two_images(setup, drafts):
  target, batch, embeds, _ = setup
  drafter, params = drafts["vispec"]
  assert isinstance(drafter, vj.ViSpecDrafter)
  vision = jnp.asarray(batch.vision_index >= 0)
  _, count = image_runs(vision)
  assert np.asarray(count[:, -1]).tolist() == [2, 0]
  _, hidden = target.forward(target.params, batch)
  ctx = draft.PrefillContext(hidden, embeds, jnp.asarray(batch.attention_mask), vision,
                             jnp.zeros((2,), jnp.int32), cache_len=embeds.shape[1] + 4)
  state, _ = jax.jit(drafter.start)(params, draft.head_params(target.params["text"]), ctx)
  extra = np.asarray(state.extra)
  assert np.abs(extra[0]).max() > 0 and np.abs(extra[1]).max() == 0
  n_vision = (batch.vision_index[0] >= 0).sum()
  dropped = np.asarray(batch.attention_mask[0]).sum() - np.asarray(state.cache.prompt_valid[0]).sum()
  assert dropped == n_vision - 2  # each image run keeps num_q - 1 = 1 compressed token


@pytest.mark.parametrize("tree", sorted(TREES))
@pytest.mark.parametrize("kind", ["vispec", "eagle", "medusa"])
def test_greedy_identical_to_generate(setup, drafts, kind, tree):
  target, batch, embeds, ref = setup
  drafter, params = drafts[kind]
  out = vj.speculative_generate(target, drafter, params, batch, tree=TREES[tree],
                                max_new_tokens=MAX_NEW, embeds=embeds)
  np.testing.assert_array_equal(np.asarray(out.tokens), ref)
  np.testing.assert_array_equal(np.asarray(out.lengths), [MAX_NEW, MAX_NEW])
  assert (np.asarray(out.stats.target_forwards) >= 1).all()
