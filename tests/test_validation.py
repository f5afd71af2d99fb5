"""The library validates what the CLI validates: every bad argument of GenerationConfig,
TreeConfig, prepare, generate and speculative_generate is a clear error naming the argument,
raised on the host before anything is compiled."""

import dataclasses
import math

import jax
import numpy as np
import pytest

import vispec_jax as vj
from vispec_jax import draft, testing
from vispec_jax.engine import decoding, sampling, tree


@pytest.fixture(scope="module")
def target(tiny_qwen_dir):
  return vj.load_target(tiny_qwen_dir)


@pytest.fixture(scope="module")
def eagle(target):
  cfg = draft.DraftConfig.for_target(target.config.text)
  return draft.EagleDrafter(cfg), draft.init_params(cfg, jax.random.PRNGKey(1))


@pytest.fixture(scope="module")
def batch(target):
  return vj.prepare(target, ["Describe the image."], images=[[testing.scene_image(112, 84)]])


# ------------------------------------------------------------------ GenerationConfig


@pytest.mark.parametrize("field,value,msg", [
    ("temperature", math.nan, "temperature must be finite"),
    ("temperature", math.inf, "temperature must be finite"),
    ("temperature", -0.5, "temperature must be >= 0"),
    ("temperature", True, "temperature must be a number"),
    ("temperature", "0.7", "temperature must be a number"),
    ("top_p", math.nan, "top_p must be finite"),
    ("top_p", -math.inf, "top_p must be finite"),
    ("top_p", 0.0, r"top_p must be in \(0, 1\]"),
    ("max_new_tokens", 8.0, "max_new_tokens must be an integer"),
    ("max_new_tokens", True, "max_new_tokens must be an integer"),
    ("max_new_tokens", "8", "max_new_tokens must be an integer"),
    ("max_new_tokens", np.array([8]), "max_new_tokens must be an integer"),
    ("max_new_tokens", -3, "max_new_tokens must be > 0"),
    ("top_k", 2.5, "top_k must be an integer"),
    ("top_k", False, "top_k must be an integer"),
    ("top_k", -1, "top_k must be >= 0"),
])
def test_generation_config_refuses(field, value, msg):
  with pytest.raises(ValueError, match=msg):
    vj.GenerationConfig(**{field: value})


def test_generation_config_normalises_numpy_scalars():
  a = vj.GenerationConfig(np.int64(16), np.float32(0.5), np.int32(4), np.float64(0.9))
  b = vj.GenerationConfig(16, 0.5, 4, 0.9)
  assert type(a.max_new_tokens) is int and type(a.temperature) is float
  assert a == b and hash(a) == hash(b)  # equal static jit arguments


# --------------------------------------------------------------------- position limit


def _limited(target, limit):
  text = dataclasses.replace(target.config.text, max_position_embeddings=limit)
  return dataclasses.replace(target, config=dataclasses.replace(target.config, text=text))


def test_prompt_plus_new_tokens_beyond_position_limit(target, batch, eagle):
  n = int(batch.prompt_lengths[0])
  small = _limited(target, n + 8)
  gen = vj.GenerationConfig(8)
  decoding.check_request(small, batch, None, gen)  # exactly at the limit: fine
  with pytest.raises(vj.InputError, match=rf"prompt of {n} tokens \+ max_new_tokens 9 = {n + 9} "
                     rf"positions, more than the model's limit of {n + 8}"):
    vj.generate(small, batch, max_new_tokens=9)
  # Speculative: the deepest verified node may look depth - 1 positions past the last token.
  t = tree.TreeConfig(depth=3, top_k=2, total_tokens=6)  # max_depth 4
  decoding.check_request(small, batch, None, vj.GenerationConfig(5), t.max_depth)
  with pytest.raises(vj.InputError, match=r"max_new_tokens 6 \+ 3 \(tree depth 4 - 1\)"):
    vj.speculative_generate(small, *eagle, batch, tree=t, max_new_tokens=6)


# ------------------------------------------------------------------------ tree bounds


def test_tree_bounds_and_kinds():
  assert tree.TreeConfig(depth=tree.MAX_DEPTH, top_k=4, total_tokens=tree.MAX_NODES).num_nodes == 128
  assert tree.chain(tree.MAX_DEPTH).max_depth == tree.MAX_DEPTH
  for kwargs, msg in [
      (dict(depth=tree.MAX_DEPTH + 1), "tree depth 17 is more than the maximum 16"),
      (dict(depth=4, top_k=16, total_tokens=tree.MAX_NODES + 1), r"total_tokens must be in \[2, 128\]"),
      (dict(top_k=tree.MAX_NODES + 1), "top_k 129 is more than the maximum"),
      (dict(depth=True), "tree depth must be an integer"),
      (dict(total_tokens=30.0), "tree total_tokens must be an integer"),
      (dict(paths="0,1"), "tree paths must be a tuple of paths"),
      (dict(paths=((0,), "1")), "must be a tuple of child ranks"),
      (dict(paths=((0,), (0.5,))), "rank must be an integer"),
      (dict(paths=((),)), "root itself"),
      (dict(paths=()), "at least one path"),
      (dict(paths=tuple((i,) for i in range(tree.MAX_NODES))), "129 nodes, more than the maximum"),
      (dict(paths=((tree.MAX_NODES,),)), "child rank 128 is more than the maximum 127"),
  ]:
    with pytest.raises(ValueError, match=msg):
      tree.TreeConfig(**kwargs)
  with pytest.raises(ValueError, match=r"chain depth must be in \[1, 16\], got 17"):
    tree.from_spec(f"chain{tree.MAX_DEPTH + 1}")
  with pytest.raises(ValueError, match="deeper than the maximum 16"):
    tree.TreeConfig(paths=tuple((0,) * d for d in range(1, tree.MAX_DEPTH + 2)))


def test_static_paths_are_normalised():
  """Lists, duplicates and order do not matter: equal trees hash equal (jit static args)."""
  a = tree.TreeConfig(paths=[[0], [1], [0, 0], [0]])
  b = tree.TreeConfig(paths=((0, 0), (1,), (0,)))
  assert a == b and hash(a) == hash(b)
  assert a.paths == ((0,), (1,), (0, 0)) and a.num_nodes == 4


def test_tree_argument_of_the_wrong_kind(target, batch, eagle):
  with pytest.raises(TypeError, match=r"tree must be a vj.TreeConfig.*from_spec\('chain4'\)"):
    vj.speculative_generate(target, *eagle, batch, tree="chain4")
  with pytest.raises(TypeError, match="tree must be a vj.TreeConfig"):
    vj.speculative_fn(target.config, eagle[0], tree={"depth": 3})
  small = dataclasses.replace(target.config.text, vocab_size=6)
  with pytest.raises(ValueError, match="branches 8 ways but the vocabulary has 6"):
    tree.check_tree(tree.TreeConfig(), small.vocab_size)


# ---------------------------------------------------------------- drafter and params


def test_drafter_and_params_of_the_wrong_kind(target, batch, eagle, tmp_path):
  d, params = eagle
  cases = [
      ((params, d), TypeError, r"got a dict \(draft params\?\): the drafter .* goes first"),
      ((d.cfg, params), TypeError, r"got a DraftConfig: pass vj.make_drafter\(cfg\)"),
      ((vj.Draft(d.cfg, params), params), TypeError, "got a Draft: pass draft.drafter"),
      ((d, d), TypeError, "draft params must be a params pytree, got a drafter"),
      ((d, vj.Draft(d.cfg, params)), TypeError, "got a Draft: pass draft.params"),
  ]
  for (a, b), exc, msg in cases:
    with pytest.raises(exc, match=msg):
      vj.speculative_generate(target, a, b, batch)
  medusa = draft.init_params(draft.DraftConfig.for_target(target.config.text, kind="medusa"),
                             jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match=r"do not fit the eagle drafter: expected the tree "
                     r"\['fc', 'layer'\], got \['heads'\]"):
    vj.speculative_generate(target, d, medusa, batch)
  wrong = jax.tree.map(lambda x: x, params)
  wrong["fc"] = {**wrong["fc"], "kernel": wrong["fc"]["kernel"][:, :8]}
  with pytest.raises(ValueError, match=r"draft param \['fc'\]\['kernel'\] has shape"):
    vj.speculative_generate(target, d, wrong, batch)
  other = draft.EagleDrafter(dataclasses.replace(d.cfg, vocab_size=99))
  with pytest.raises(ValueError, match="vocab_size 99 does not match the target's 320"):
    vj.speculative_generate(target, other, params, batch)


def test_target_batch_and_embeds_of_the_wrong_kind(target, batch):
  with pytest.raises(TypeError, match="batch must be a vj.Batch"):
    vj.generate(target, ["Describe the image."])
  with pytest.raises(TypeError, match="target must be a vj.Target"):
    vj.generate(target.config, batch)
  two = vj.prepare(target, ["a", "b"])
  p2, p = two.input_ids.shape[1], batch.input_ids.shape[1]
  with pytest.raises(vj.InputError, match=rf"embeds has shape \(2, {p2}, 64\) but this batch "
                     rf"needs \(1, {p}, 64\)"):
    vj.generate(target, batch, embeds=target.embed(target.params, two))
  with pytest.raises(vj.InputError, match="embeds has shape"):
    vj.speculative_generate(target, *_eagle_for(target), batch, embeds=np.zeros((1, 32, 8)))
  with pytest.raises(ValueError, match="top_k 1000 is larger than the vocabulary"):
    vj.generate(target, batch, temperature=1.0, top_k=1000)


def _eagle_for(target):
  cfg = draft.DraftConfig.for_target(target.config.text)
  return draft.EagleDrafter(cfg), draft.init_params(cfg, jax.random.PRNGKey(1))


# ------------------------------------------------------------------------- keys/seeds


def test_key_arguments(target, batch):
  k = jax.random.PRNGKey(0)
  for kwargs, msg in [
      (dict(seeds=[1, 2]), r"one integer per row of the batch \(1 rows\), got shape \(2,\)"),
      (dict(seeds=[1.5]), "seeds must be integers"),
      (dict(seeds=[True]), "seeds must be integers"),
      (dict(seeds=[-1]), r"seeds must be in \[0, 2\*\*32\)"),
      (dict(key=3), r"got the integer 3: use jax.random.key\(3\)"),
      (dict(key=jax.random.split(k, 1)), "key must be one PRNG key"),
      (dict(key=np.zeros(2, np.float32)), "key must be a PRNG key"),
      (dict(keys=k), "keys must be one PRNG key per row"),
      (dict(keys=jax.random.split(jax.random.key(0), 2)), "keys must be one PRNG key per row"),
      (dict(key=k, seeds=[1]), "at most one of key=, seeds=, keys=; got key and seeds"),
  ]:
    with pytest.raises(ValueError, match=msg):
      vj.generate(target, batch, temperature=1.0, **kwargs)
  # One key for the batch: row b uses fold_in(key, b); typed and raw per-row keys are accepted.
  rows = sampling.request_keys(3, key=k)
  np.testing.assert_array_equal(rows[2], jax.random.fold_in(k, 2))
  np.testing.assert_array_equal(sampling.request_keys(2, seeds=[7, 2 ** 32 - 1])[1],
                                jax.random.PRNGKey(2 ** 32 - 1))
  assert sampling.request_keys(3, keys=jax.random.split(jax.random.key(0), 3)).shape == (3,)


# -------------------------------------------------------------------------- prepare


def test_prepare_names_the_real_problem(target):
  img = testing.scene_image(112, 84)
  for kwargs, msg in [
      (dict(prompts=["hi"], images=[img]), r"images\[0\] is a single image, not a list.*"
                                           r"images=\[\[image\]\]"),
      (dict(prompts=["hi"], images=["cat.png"]), r"images\[0\] is a single image, not a list"),
      (dict(prompts=["a", "b"], images=[img, img]), r"images\[0\] is a single image"),
      (dict(prompts=["hi"], images=img), "images must be a list with one list of images per prompt"),
      (dict(prompts=["hi"], images=[[img], [img]]), "1 prompts but images given for 2 rows"),
      (dict(prompts=["hi"], images=[[3]]), "an image must be a PIL image, a file path or an HxWx3"),
      (dict(prompts=["hi"], videos=[[img]]), r"videos\[0\]\[0\] must be a list of frames"),
      (dict(prompts=["hi"], videos=[[[]]]), r"videos\[0\]\[0\] is a video with no frames"),
      (dict(prompts=[3]), r"prompts\[0\] must be a string, got int"),
      (dict(prompts=["fine", None]), r"prompts\[1\] must be a string, got NoneType"),
      (dict(prompts=["fine", b"bytes"]), r"prompts\[1\] must be a string, got bytes"),
      (dict(prompts=42), "prompts must be a list of strings, got int"),
      (dict(prompts=[]), "no prompts given"),
      (dict(prompts=["hi"], max_length=0), "max_length must be a positive integer"),
      (dict(prompts=["hi"], video_fps=math.nan), "video_fps must be a positive finite number"),
  ]:
    with pytest.raises(vj.InputError, match=msg):
      vj.prepare(target, **kwargs)


@pytest.mark.parametrize("shape,dtype,msg", [
    ((84, 112), np.uint8, r"must be HxWx3 \(RGB, channels last\), got shape \(84, 112\)"),
    ((84, 112, 4), np.uint8, "must be HxWx3"),
    ((3, 84, 112), np.uint8, "must be HxWx3"),
    ((84, 112, 3), np.float32, "must be uint8"),
])
def test_prepare_refuses_other_arrays(target, shape, dtype, msg):
  with pytest.raises(vj.InputError, match=msg):
    vj.prepare(target, ["hi"], images=[[np.zeros(shape, dtype)]])


def test_prepare_accepts_numpy_images_and_videos(target):
  img = testing.scene_image(112, 84)
  a = vj.prepare(target, ["Describe."], images=[[np.asarray(img)]])
  b = vj.prepare(target, ["Describe."], images=[[img]])
  np.testing.assert_array_equal(a.input_ids, b.input_ids)
  np.testing.assert_array_equal(a.vision[0].patches, b.vision[0].patches)
  frames = [testing.scene_image(84, 56, seed=i) for i in range(4)]
  a = vj.prepare(target, ["What happens?"], videos=[[np.stack([np.asarray(f) for f in frames])]])
  b = vj.prepare(target, ["What happens?"], videos=[[frames]])
  np.testing.assert_array_equal(a.input_ids, b.input_ids)
  np.testing.assert_array_equal(a.vision[0].patches, b.vision[0].patches)
