"""Speculative decoding engine: greedy output identical to vanilla, oracle acceptance, stats."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vispec_jax as vj
from vispec_jax import draft, testing
from vispec_jax.engine import speculative, tree

TREES = {
    "dynamic": tree.TreeConfig(),
    "dynamic_small": tree.TreeConfig(depth=2, top_k=3, total_tokens=7),
    "chain": tree.chain(4),
    "static": tree.TreeConfig(paths=((0,), (1,), (2,), (0, 0), (0, 1), (1, 0), (0, 0, 0), (0, 0, 1),
                                     (0, 0, 0, 0))),
}

FRAMES = [testing.scene_image(84, 56, seed=20 + i) for i in range(4)]
ROWS = [  # (prompt, images, videos): text-only and vision prompts of different lengths
    ("Describe the image.", [testing.scene_image(112, 84, 1)], []),
    ("What colour is the square? Please answer with an explanation.", [], []),
    ("Compare <image> with <image>.", [testing.scene_image(56, 84, 2), testing.scene_image(84, 56, 3)], []),
    ("hi", [], []),
    ("What happens in the video?", [], [FRAMES]),
    ("How many circles are there?", [testing.scene_image(56, 56, 4)], []),
    ("The picture shows a red square, two blue circles and a green triangle. Is that right?", [], []),
    ("Where is the star?", [testing.scene_image(140, 56, 5)], []),
    ("Describe both. <image> and then <image>", [testing.scene_image(56, 56, 6), testing.scene_image(112, 56, 7)], []),
    ("Answer yes or no.", [], []),
    ("What is in the top left corner of this picture, and what colour is it?", [testing.scene_image(84, 84, 8)], []),
    ("Describe the image in detail.", [], []),
]
BATCHES = {"b1": [0], "b2": [1, 2], "b4": [3, 4, 5, 6], "b12": list(range(12))}


@pytest.fixture(scope="module")
def target(tiny_qwen_dir):
  t = vj.load_target(tiny_qwen_dir)
  return dataclasses.replace(t, config=dataclasses.replace(t.config, eos_token_ids=()))


@pytest.fixture(scope="module")
def random_eagle(target):
  cfg = draft.DraftConfig.for_target(target.config.text)
  return draft.EagleDrafter(cfg), draft.init_params(cfg, jax.random.PRNGKey(1))


_cache = {}


def _batch(target, name):
  if name not in _cache:
    rows = [ROWS[i] for i in BATCHES[name]]
    batch = vj.prepare(target, [r[0] for r in rows], images=[r[1] for r in rows],
                       videos=[r[2] for r in rows])
    _cache[name] = (batch, target.embed(target.params, batch))
  return _cache[name]


def _vanilla(target, name, max_new, eos=()):
  key = (name, max_new, eos)
  if key not in _cache:
    batch, embeds = _batch(target, name)
    t = _with_eos(target, eos)
    _cache[key] = vj.generate(t, batch, max_new, embeds=embeds)
  return _cache[key]


def _with_eos(target, eos):
  return dataclasses.replace(target, config=dataclasses.replace(target.config, eos_token_ids=tuple(eos)))


def _drafter(name, target, random_eagle, reference):
  if name == "random":
    return random_eagle
  ref = np.concatenate([np.asarray(reference.tokens), np.zeros((reference.tokens.shape[0], 16), np.int32)], 1)
  return testing.OracleDrafter(target.config.text.vocab_size), {"reference": jnp.asarray(ref)}


def _check(target, batch_name, tree_name, drafter_name, random_eagle, max_new=20, eos=()):
  batch, embeds = _batch(target, batch_name)
  ref = _vanilla(target, batch_name, max_new, eos)
  free = _vanilla(target, batch_name, max_new + 8)  # eos-free reference for the oracle
  d, params = _drafter(drafter_name, target, random_eagle, free)
  out = vj.speculative_generate(_with_eos(target, eos), d, params, batch, tree=TREES[tree_name],
                                max_new_tokens=max_new, embeds=embeds)
  np.testing.assert_array_equal(np.asarray(out.lengths), np.asarray(ref.lengths))
  np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(ref.tokens))
  # Provenance: the root and one bonus token per round are the target's (the last round may be
  # cut before its bonus); the rest are accepted draft tokens.
  drafted = np.asarray(out.drafted)
  valid = np.arange(max_new)[None] < np.asarray(out.lengths)[:, None]
  assert not (drafted & ~valid).any() and not drafted[:, 0].any()
  own, forwards = (valid & ~drafted).sum(1), np.asarray(out.stats.target_forwards)
  assert ((own == forwards + 1) | (own == forwards)).all(), (own, forwards)
  assert (drafted.sum(1) <= np.asarray(out.stats.accepted)).all()
  return out


@pytest.mark.parametrize("tree_name", list(TREES))
@pytest.mark.parametrize("drafter_name", ["random", "oracle"])
def test_greedy_identical_b12(target, random_eagle, tree_name, drafter_name):
  out = _check(target, "b12", tree_name, drafter_name, random_eagle)
  stats = out.stats
  if drafter_name == "oracle":  # every round accepts the deepest path the tree allows
    depth = TREES[tree_name].max_depth
    hist = np.asarray(stats.histogram)
    # The last round of a row may stop early only because max_new_tokens is reached.
    assert (hist[:, depth] >= np.asarray(stats.target_forwards) - 1).all(), hist
    full = 1 + (depth + 1) * np.asarray(stats.target_forwards)
    assert (full >= 20).all() and (full - (depth + 1) < 20).all()
  else:
    assert np.asarray(stats.target_forwards).min() >= 1


@pytest.mark.parametrize("batch_name,tree_name", [("b1", "dynamic"), ("b2", "static"), ("b4", "dynamic")])
def test_greedy_identical_small_batches(target, random_eagle, batch_name, tree_name):
  _check(target, batch_name, tree_name, "random", random_eagle)


@pytest.mark.parametrize("tree_name,drafter_name", [("dynamic", "random"), ("chain", "oracle")])
def test_eos_inside_tree(target, random_eagle, tree_name, drafter_name):
  """EOS chosen as a token the rows produce mid-answer: rows end exactly there, others run on."""
  free = np.asarray(_vanilla(target, "b12", 28).tokens)
  eos = int(free[0, 6])
  out = _check(target, "b12", tree_name, drafter_name, random_eagle, eos=(eos,))
  assert int(out.lengths[0]) == 7


@pytest.mark.parametrize("max_new", [13])
def test_max_new_tokens_not_multiple_of_round(target, random_eagle, max_new):
  out = _check(target, "b12", "dynamic", "oracle", random_eagle, max_new=max_new)
  assert (np.asarray(out.lengths) == max_new).all()


def test_no_recompile_same_bucket(target, random_eagle):
  d, params = random_eagle
  a = vj.prepare(target, ["Describe the image."], images=[[testing.scene_image(112, 84, 1)]])
  b = vj.prepare(target, ["What is this? Tell me."], images=[[testing.scene_image(112, 84, 9)]])
  assert a.input_ids.shape == b.input_ids.shape
  vj.speculative_generate(target, d, params, a, max_new_tokens=8).tokens.block_until_ready()
  n = speculative.speculative_loop._cache_size()
  vj.speculative_generate(target, d, params, b, max_new_tokens=8).tokens.block_until_ready()
  assert speculative.speculative_loop._cache_size() == n


def test_no_host_transfer_inside_loop(target, random_eagle):
  d, params = random_eagle
  batch, embeds = _batch(target, "b2")
  args = jax.device_put((target.params["text"], params, embeds, batch.positions, batch.attention_mask,
                         batch.next_position, batch.vision_index >= 0, jax.random.PRNGKey(0),
                         np.float32(1e-6), np.float32(1.0)))
  # Same static arguments as the b2 case above, so this reuses its compiled program.
  kwargs = dict(cfg=target.config.text, drafter=d, tree_cfg=TREES["static"], max_new_tokens=20,
                greedy=True, top_k=0, use_top_p=False, eos_ids=(), pad_id=0)
  speculative.speculative_loop(*args, **kwargs).tokens.block_until_ready()  # compile outside the guard
  with jax.transfer_guard("disallow"):
    out = speculative.speculative_loop(*args, **kwargs)
    out.tokens.block_until_ready()


def test_ancestor_mask_and_static_structure():
  s = tree.static_structure(TREES["static"].paths)
  np.testing.assert_array_equal(s["parents"], [-1, 0, 0, 0, 1, 1, 2, 4, 4, 7])
  np.testing.assert_array_equal(s["depths"], [0, 1, 1, 1, 2, 2, 2, 3, 3, 4])
  anc = np.asarray(tree.ancestor_mask(jnp.asarray(s["parents"])[None], 4))[0]
  assert anc[9].tolist() == [True, True, False, False, True, False, False, True, False, True]
  assert anc.sum(1).tolist() == (s["depths"] + 1).tolist()
  with pytest.raises(ValueError, match="no parent"):
    tree.TreeConfig(paths=((0, 0),))
  with pytest.raises(ValueError, match="total_tokens"):
    tree.TreeConfig(depth=1, top_k=2, total_tokens=9)


def test_tree_from_spec():
  """Trees named on command lines (infer.demo, infer.bench table|length)."""
  assert tree.from_spec("dynamic") == vj.TreeConfig()
  assert tree.from_spec("dynamic-d4k4t16") == vj.TreeConfig(depth=4, top_k=4, total_tokens=16)
  assert tree.from_spec("chain3") == tree.chain(3)
  for bad in ("chain0", "bushy", "dynamic-d4"):
    with pytest.raises(ValueError, match="unknown tree"):
      tree.from_spec(bad)
