"""The user's-own-jit example in docs/api.md runs as written."""

import os
import re

DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "api.md")


def test_api_doc_example_runs(tmp_path, monkeypatch):
  text = open(DOC).read()
  block = re.search(r"## Embedding speculative decoding.*?```python\n(.*?)```", text, re.S).group(1)
  block = block.replace("/tmp/vispec-api-example", str(tmp_path / "model"))
  namespace = {}
  exec(compile(block, DOC, "exec"), namespace)  # the block asserts its own results
  assert namespace["tokens"].shape == (2, 16)
