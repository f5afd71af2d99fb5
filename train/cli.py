"""Process setup shared by the command-line entry points (train, datagen)."""

from __future__ import annotations

import logging as std_logging
import os
import sys


class _DropChatter(std_logging.Filter):
  """Drops orbax's per-save INFO lines (dozens per checkpoint); warnings still pass."""

  def filter(self, record):
    return record.levelno > std_logging.INFO or "orbax" not in record.pathname


def setup() -> None:
  """Training never runs PyTorch, but transformers imports it (~10 s) for the tokenizer and
  image-processor classes we use; keep it out unless VISPEC_ALLOW_TORCH=1. Quiet orbax."""
  if os.environ.get("VISPEC_ALLOW_TORCH") != "1" and "torch" not in sys.modules:
    sys.modules["torch"] = None  # `import torch` now fails fast; transformers runs without it
  os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
  for handler in std_logging.getLogger().handlers + std_logging.getLogger("absl").handlers:
    handler.addFilter(_DropChatter())
  std_logging.getLogger("absl").addFilter(_DropChatter())
