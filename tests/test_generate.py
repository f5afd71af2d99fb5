"""vj.generate: batching, EOS, sampling distribution, no recompiles."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vispec_jax as vj
from vispec_jax import testing
from vispec_jax.engine import decoding, sampling


@pytest.fixture(scope="module")
def target(tiny_qwen_dir):
  return vj.load_target(tiny_qwen_dir)


def _with_eos(target, eos):
  cfg = dataclasses.replace(target.config, eos_token_ids=tuple(eos))
  return dataclasses.replace(target, config=cfg)


PROMPTS = ["Describe the image.", "What colour is the square? Please answer with an explanation.",
           "How many circles?"]
IMAGES = [[testing.scene_image(112, 84)], [], [testing.scene_image(56, 84, 3)]]


def test_batch_rows_equal_single_runs(target):
  """Left padding and per-row positions: a row's tokens do not depend on its batch mates."""
  t = _with_eos(target, ())
  batched = vj.trim(vj.generate(t, vj.prepare(t, PROMPTS, images=IMAGES), max_new_tokens=12))
  for i in range(3):
    alone = vj.trim(vj.generate(t, vj.prepare(t, [PROMPTS[i]], images=[IMAGES[i]]), max_new_tokens=12))
    assert batched[i] == alone[0]


def test_eos_ends_row_and_pads(target):
  free = _with_eos(target, ())
  batch = vj.prepare(free, PROMPTS[:2], images=IMAGES[:2])
  ref = np.asarray(vj.generate(free, batch, max_new_tokens=16).tokens)
  eos = int(ref[0, 5])
  out = vj.generate(_with_eos(target, (eos,)), batch, max_new_tokens=16)
  tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
  for i in range(2):
    hits = np.nonzero(ref[i] == eos)[0]
    n = hits[0] + 1 if len(hits) else 16
    assert lengths[i] == n
    np.testing.assert_array_equal(tokens[i, :n], ref[i, :n])
    assert (tokens[i, n:] == target.config.pad_token_id).all()


def test_max_new_tokens_exact(target):
  out = vj.generate(_with_eos(target, ()), vj.prepare(target, PROMPTS[:1]), max_new_tokens=7)
  assert out.tokens.shape == (1, 7) and int(out.lengths[0]) == 7


def test_sampling_is_reproducible(target):
  batch = vj.prepare(target, PROMPTS, images=IMAGES)
  a = vj.generate(target, batch, 10, temperature=1.0, key=jax.random.PRNGKey(1))
  b = vj.generate(target, batch, 10, temperature=1.0, key=jax.random.PRNGKey(1))
  c = vj.generate(target, batch, 10, temperature=1.0, key=jax.random.PRNGKey(2))
  np.testing.assert_array_equal(a.tokens, b.tokens)
  assert not np.array_equal(a.tokens, c.tokens)


def test_first_sampled_token_follows_softmax(target):
  """Empirical distribution of the first token over many rows vs softmax(logits / T)."""
  n, temp = 2048, 0.02  # low temperature: the tiny random model's logits are flat
  batch = vj.prepare(target, [PROMPTS[0]] * n, images=[IMAGES[0]] * n)
  one = vj.prepare(target, [PROMPTS[0]], images=[IMAGES[0]])
  logits, _ = target.forward(target.params, one)
  p = np.asarray(jax.nn.softmax(logits[0, -1] / temp))
  out = vj.generate(target, batch, 1, temperature=temp, key=jax.random.PRNGKey(0))
  counts = np.bincount(np.asarray(out.tokens[:, 0]), minlength=len(p)) / n
  tv = 0.5 * np.abs(counts - p).sum()
  # For n samples the expected TV is about sum(sqrt(p(1-p)/n))/2*0.8; allow 3x that.
  expected = 0.5 * 0.8 * np.sqrt(p * (1 - p) / n).sum()
  assert tv < 3 * expected + 0.01, (tv, expected)
  assert p.max() > 0.05, "distribution too flat for the test to mean anything"


@pytest.mark.parametrize("top_k,top_p", [(0, 1.0), (3, 1.0), (0, 0.6), (4, 0.7)])
def test_sampler_distribution_synthetic(top_k, top_p):
  logits = jnp.log(jnp.array([[0.3, 0.25, 0.2, 0.1, 0.08, 0.05, 0.02]]))
  keys = jax.random.split(jax.random.PRNGKey(0), 20000)
  draws = jax.vmap(lambda k: sampling.select_tokens(logits, k, greedy=False, temperature=1.0,
                                                    top_k=top_k, top_p=None if top_p == 1 else top_p))(keys)
  freq = np.bincount(np.asarray(draws).ravel(), minlength=7) / len(keys)
  p = np.array([0.3, 0.25, 0.2, 0.1, 0.08, 0.05, 0.02])
  keep = np.ones(7, bool)
  if top_k:
    keep[top_k:] = False
  if top_p < 1:
    keep &= (np.cumsum(p) - p) < top_p
  q = np.where(keep, p, 0) / np.where(keep, p, 0).sum()
  np.testing.assert_allclose(freq, q, atol=0.015)


def test_same_bucket_does_not_recompile(target):
  a = vj.prepare(target, ["Describe the image."], images=[[testing.scene_image(112, 84, 1)]])
  b = vj.prepare(target, ["What is shown here, in a few words?"], images=[[testing.scene_image(112, 84, 2)]])
  assert a.input_ids.shape == b.input_ids.shape
  vj.generate(target, a, 8).tokens.block_until_ready()
  n_gen = decoding._generate._cache_size()
  vj.generate(target, b, 8).tokens.block_until_ready()
  assert decoding._generate._cache_size() == n_gen


def test_bad_generation_options(target):
  batch = vj.prepare(target, ["hi"])
  for kwargs, msg in [({"max_new_tokens": 0}, "max_new_tokens"), ({"temperature": -1.0}, "temperature"),
                      ({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p"), ({"top_k": -2}, "top_k")]:
    with pytest.raises(ValueError, match=msg):
      vj.generate(target, batch, **kwargs)


def test_bad_prompts(target):
  with pytest.raises(vj.InputError, match="empty prompt"):
    vj.prepare(target, ["  "])
  with pytest.raises(vj.InputError, match="longer than the limit"):
    vj.prepare(target, ["a long prompt " * 20], max_length=16)
  with pytest.raises(vj.InputError, match="markers"):
    vj.prepare(target, ["<image> and <image>"], images=[[testing.scene_image()]])
  with pytest.raises(vj.InputError, match="image not found"):
    vj.prepare(target, ["hi"], images=[["/nonexistent.png"]])
