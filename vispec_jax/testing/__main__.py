"""python -m vispec_jax.testing [FOLDER]: writes a tiny random Qwen2.5-VL checkpoint folder."""

import sys

from vispec_jax.testing import make_tiny_qwen

print(make_tiny_qwen(sys.argv[1] if len(sys.argv) > 1 else "/tmp/vispec-tiny-qwen"))
