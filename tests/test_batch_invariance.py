"""Seeded batch invariance (after vLLM's batch invariance test): with the same seed, a row
("the needle") samples the same tokens at T=0.8 alone and inside a batch of 4 with other
prompts of different lengths, for vj.generate and vj.speculative_generate."""

import dataclasses

import jax
import numpy as np
import pytest

import vispec_jax as vj
from vispec_jax import draft, testing
from vispec_jax.engine import tree

TEMPERATURE, MAX_NEW = 0.8, 16
NEEDLE = ("How many circles are in the picture?", [testing.scene_image(112, 84, 3)])
OTHERS = [  # different lengths (one pushes the batch into a longer bucket), with and without images
    ("hi", []),
    ("The picture shows a red square, two blue circles and a green triangle on a grey "
     "background, with a small yellow star in the top left corner. Is that right? " * 2, []),
    ("Compare <image> with <image>.", [testing.scene_image(56, 84, 1), testing.scene_image(84, 56, 2)]),
]
SEED, OTHER_SEEDS = 1234, [7, 99, 2 ** 31 + 5]


@pytest.fixture(scope="module")
def target(tiny_qwen_dir):
  t = vj.load_target(tiny_qwen_dir)
  return dataclasses.replace(t, config=dataclasses.replace(t.config, eos_token_ids=()))


@pytest.fixture(scope="module")
def batches(target):
  alone = vj.prepare(target, [NEEDLE[0]], images=[NEEDLE[1]])
  rows = OTHERS[:2] + [NEEDLE] + OTHERS[2:]  # the needle in the middle, at row 2
  mixed = vj.prepare(target, [r[0] for r in rows], images=[r[1] for r in rows])
  assert mixed.input_ids.shape[1] > alone.input_ids.shape[1]  # different padding and bucket
  return alone, mixed, OTHER_SEEDS[:2] + [SEED] + OTHER_SEEDS[2:]


def _run(fn, target, batch, **kwargs):
  return vj.trim(fn(target, batch, max_new_tokens=MAX_NEW, temperature=TEMPERATURE, **kwargs))


def _spec(target):
  cfg = draft.DraftConfig.for_target(target.config.text)
  params = draft.init_params(cfg, jax.random.PRNGKey(1))
  t = tree.TreeConfig(depth=2, top_k=3, total_tokens=7)
  return lambda tgt, batch, **kw: vj.speculative_generate(tgt, draft.EagleDrafter(cfg), params,
                                                          batch, tree=t, **kw)


@pytest.mark.parametrize("engine", ["generate", "speculative"])
def test_seeded_row_same_alone_and_in_batch(target, batches, engine):
  fn = vj.generate if engine == "generate" else _spec(target)
  alone, mixed, seeds = batches
  solo = _run(fn, target, alone, seeds=[SEED])[0]
  batched = _run(fn, target, mixed, seeds=seeds)
  assert batched[2] == solo
  # Per-row keys give the same tokens as the equal seeds.
  keys = jax.vmap(jax.random.PRNGKey)(np.asarray(seeds, np.uint32))
  assert _run(fn, target, mixed, keys=keys) == batched
  # The draws are random: another seed gives another answer.
  assert _run(fn, target, alone, seeds=[SEED + 1])[0] != solo


def test_one_key_gives_row_b_fold_in_key_b(target, batches):
  """key= (one key for the batch) keeps working: row b samples with fold_in(key, b)."""
  alone, mixed, _ = batches
  key = jax.random.PRNGKey(5)
  batched = _run(vj.generate, target, mixed, key=key)
  solo = _run(vj.generate, target, alone, keys=jax.random.fold_in(key, 2)[None])
  assert batched[2] == solo[0]
