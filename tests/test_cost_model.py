"""The roofline cost model against hand-computed values."""

import pytest

from infer import bench_cost as cost_model
from vispec_jax.engine import tree as tree_lib

# 1 layer, hidden 4, 2 heads x 2 dims, 1 kv head, MLP 8, vocab 10.
STACK = cost_model.Stack(layers=1, hidden=4, intermediate=8, heads=2, kv_heads=1, head_dim=2,
                         vocab=10)


def test_weights_flops_and_bytes_by_hand():
  # q 4x4 + k, v 4x2 each + o 4x4 + gate/up/down 3 x 4x8 = 16 + 16 + 16 + 96
  assert STACK.layer_weights == 144
  flops, nbytes = STACK.cost(rows=2, tokens=3, lm_head_tokens=1, cache=5, itemsize=2)
  # 2*6*144 matmuls + 2*2*1*4*10 lm_head + 4*6*5*2*2 attention
  assert flops == 1728 + 160 + 480
  # (144 + 40) weights * 2 bytes + KV: 2 (k, v) * 1 kv head * 2 dims * 2 bytes * 2 rows * (5 + 3)
  assert nbytes == 368 + 128


def test_roofline_takes_the_slower_side():
  memory_bound = cost_model.Device("m", flops=1e30, bandwidth=100.0, overhead_s=0.5)
  assert cost_model.seconds(memory_bound, 1e3, 200.0) == pytest.approx(2.5)
  compute_bound = cost_model.Device("c", flops=10.0, bandwidth=1e30)
  assert cost_model.seconds(compute_bound, 50.0, 1e9) == pytest.approx(5.0)


def test_free_verify_and_draft_give_tau_plus_one():
  """Memory-bound target with a free draft: verifying 5 tokens costs one step plus writing 4
  more KV entries, so the speedup is about tau + 1."""
  device = cost_model.Device("m", flops=1e30, bandwidth=1e9)
  free_draft = cost_model.Stack(0, 1, 0, 0, 0, 0, 0)
  r = cost_model.round_seconds(device, STACK, free_draft, tree_lib.chain(4), tau=3.0, cache=0)
  assert r["draft"] == r["commit"] == 0.0
  kv_per_token = 2 * 1 * 2 * 2  # k and v, 1 kv head, 2 dims, 2 bytes
  assert r["verify"] - r["step"] == pytest.approx(4 * kv_per_token / 1e9)
  assert r["speedup"] == pytest.approx(4.0 * r["step"] / r["verify"])
  assert 3.6 < r["speedup"] < 4.0


def test_compute_bound_verify_grows_with_the_tree():
  device = cost_model.Device("c", flops=1.0, bandwidth=1e30)
  r = cost_model.round_seconds(device, STACK, STACK, tree_lib.chain(4), tau=4.0, cache=0)
  assert r["verify"] == pytest.approx(5 * r["step"])
  assert r["draft"] == pytest.approx(3 * r["step"])  # a chain of 4 feeds 3 levels of 1 token
  assert r["speedup"] < 1.0


def test_level_widths():
  assert tree_lib.level_widths(tree_lib.TreeConfig(depth=3, top_k=8, total_tokens=30)) == [8] * 3
  assert tree_lib.level_widths(tree_lib.chain(4)) == [1, 1, 1]  # the 4th comes from level 3
