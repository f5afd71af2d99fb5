"""Fixtures for parity tests against transformers' PyTorch models (needs the [test] extra)."""

import pytest

pytest.importorskip("torch")

from .hf_reference import build_hf_qwen  # noqa: E402


@pytest.fixture(scope="session")
def hf_qwen(tmp_path_factory):
  folder = str(tmp_path_factory.mktemp("hf_qwen"))
  return folder, build_hf_qwen(folder)
