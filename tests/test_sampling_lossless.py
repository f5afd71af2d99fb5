"""Speculative sampling is lossless: the joint law of the first 3 tokens equals vanilla's.

A tiny target with an 8-token vocabulary, a random draft and a small tree; 20k rows sampled in
one batch. A chi-square goodness-of-fit test compares the empirical joint distribution of the
first three tokens with the exact one computed from the target's logits. A deliberately wrong
acceptance rule (no residual after a rejection) must fail the same test, so the check can fail.
"""

import dataclasses
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vispec_jax as vj
from vispec_jax import draft, layers, target as target_lib
from vispec_jax.engine import decoding, sampling, speculative, tree
from vispec_jax.configs import QwenVisionConfig, TargetConfig, TextConfig
from vispec_jax.models import decoder

V, N, PROMPT = 8, 20000, [1, 5, 2, 7]
TREE = tree.TreeConfig(depth=2, top_k=3, total_tokens=6)


@pytest.fixture(scope="module")
def setup():
  text = TextConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2,
                    num_kv_heads=1, head_dim=16, mrope_section=(2, 3, 3), qkv_bias=True)
  vision = QwenVisionConfig(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=32)
  cfg = TargetConfig("qwen2_5_vl", text, vision, image_token_id=V - 1, eos_token_ids=(), pad_token_id=0)
  shapes = vj.models.family(cfg).param_shapes(cfg)
  params = layers.init_params(shapes, jax.random.PRNGKey(3), std=0.5)  # peaky distributions
  t = target_lib.Target(cfg, params)
  p = len(PROMPT)
  ids = np.tile(np.asarray(PROMPT, np.int32), (N, 1))
  pos = np.broadcast_to(np.arange(p, dtype=np.int32), (3, N, p)).copy()
  batch = vj.Batch(ids, np.ones((N, p), bool), pos, np.full(N, p, np.int32), [],
                   np.full((N, p), -1, np.int32), np.full(N, p, np.int32))
  embeds = decoder.embed_tokens(params["text"], jnp.asarray(ids))
  dcfg = draft.DraftConfig.for_target(text)
  dparams = layers.init_params(draft.param_shapes(dcfg), jax.random.PRNGKey(4), std=0.5)
  return t, batch, embeds, draft.EagleDrafter(dcfg), dparams


def exact_joint(t, temperature, top_k):
  """P(x1, x2, x3 | prompt) under the warped target, by enumerating all prefixes."""
  text = t.params["text"]
  joint = np.ones(())
  for n in range(3):
    prefixes = np.array(list(itertools.product(range(V), repeat=n)), np.int32).reshape(V ** n, n)
    ids = np.concatenate([np.tile(PROMPT, (len(prefixes), 1)), prefixes], 1).astype(np.int32)
    pos = np.broadcast_to(np.arange(ids.shape[1], dtype=np.int32), (3,) + ids.shape)
    logits, _ = target_lib._forward(text, t.config.text, decoder.embed_tokens(text, ids), pos,
                                    np.ones(ids.shape, bool))
    step = np.asarray(sampling.target_probs(logits[:, -1], temperature, top_k))  # [V^n, V]
    joint = (joint.reshape(-1, 1) * step).reshape((V,) * (n + 1))
  return joint.reshape(-1)


def chi2_pvalue(samples, expected_p):
  counts = np.bincount(samples[:, 0] * V * V + samples[:, 1] * V + samples[:, 2], minlength=V ** 3)
  expected = expected_p * len(samples)
  small = expected < 5
  obs = np.append(counts[~small], counts[small].sum())
  exp = np.append(expected[~small], expected[small].sum())
  keep = exp > 0
  stat = float(((obs[keep] - exp[keep]) ** 2 / exp[keep]).sum())
  dof = int(keep.sum()) - 1
  return float(jax.scipy.special.gammaincc(dof / 2.0, stat / 2.0)), dof


def _spec_samples(setup, temperature, top_k, seed=0):
  t, batch, embeds, d, dparams = setup
  out = vj.speculative_generate(t, d, dparams, batch, tree=TREE, max_new_tokens=3,
                                temperature=temperature, top_k=top_k, embeds=embeds,
                                key=jax.random.PRNGKey(seed))
  return np.asarray(out.tokens), out.stats


@pytest.mark.slow
@pytest.mark.parametrize("temperature,top_k", [(1.0, 0), (0.7, 4)])
def test_speculative_sampling_matches_exact_joint(setup, temperature, top_k):
  t, batch, embeds, *_ = setup
  p = exact_joint(t, temperature, top_k)
  assert p.max() > 0.02 and (p > 0).sum() > 20  # a distribution worth testing
  tokens, stats = _spec_samples(setup, temperature, top_k)
  pval, dof = chi2_pvalue(tokens, p)
  assert pval > 0.01, (pval, dof)
  assert float(np.asarray(stats.accepted).sum()) > 0.1 * N, "the draft was never accepted"
  vanilla = np.asarray(vj.generate(t, batch, 3, temperature=temperature, top_k=top_k,
                                   embeds=embeds, key=jax.random.PRNGKey(1)).tokens)
  assert chi2_pvalue(vanilla, p)[0] > 0.01  # the reference itself passes


@pytest.mark.slow
def test_wrong_acceptance_rule_is_detected(setup, monkeypatch):
  """Without the residual, rejected draft tokens are over-sampled: the test must see it."""
  t, *_ = setup
  monkeypatch.setattr(speculative, "accept_sampling",
                      functools.partial(speculative.accept_sampling, residual=False))
  speculative.speculative_loop.clear_cache()
  try:
    tokens, _ = _spec_samples(setup, 1.0, 0)
  finally:
    speculative.speculative_loop.clear_cache()
  pval, _ = chi2_pvalue(tokens, exact_joint(t, 1.0, 0))
  assert pval < 0.01, pval
