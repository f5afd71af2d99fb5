"""Shared fixtures: tiny checkpoints written once per session."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

from vispec_jax import testing  # noqa: E402


@pytest.fixture(scope="session")
def tiny_qwen_dir(tmp_path_factory):
  """A torch-free random tiny Qwen2.5-VL checkpoint folder (HF layout)."""
  return testing.make_tiny_qwen(str(tmp_path_factory.mktemp("tiny_qwen")))
