"""The host side of streaming: token ids arriving round by round -> new text, per row.

`vj.generate(..., on_tokens=streamer)` and `vj.speculative_generate(..., on_tokens=streamer)`
call the streamer from inside the compiled loop (an ordered host callback) with each round's
new tokens. The streamer decodes each row's tokens so far and passes on only the text that is
new. Text is held back while it ends in an incomplete character (a byte-level token that is
half of a UTF-8 sequence decodes to U+FFFD) or while decoding rewrote what was already passed
on; `finish()` flushes the rest. So the pieces of a row join to the decoded final answer.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import numpy as np


def print_text(row: int, text: str) -> None:
  """The default `write`: every row's text to stdout as it comes."""
  sys.stdout.write(text)
  sys.stdout.flush()


class TextStreamer:
  """`on_tokens` for the decoding loops that decodes incrementally and calls write(row, text).

  Pass the same object to every call: it is a static argument of the compiled program (hashed
  by identity), so a new streamer means a new compilation. `reset()` starts over.
  """

  def __init__(self, tokenizer, write: Callable[[int, str], None] = print_text,
               skip_special_tokens: bool = True):
    self.tokenizer = tokenizer
    self.write = write
    self.skip_special_tokens = skip_special_tokens
    self.reset()

  def reset(self) -> None:
    self.tokens: dict[int, list[int]] = {}   # row -> every token id received
    self.text: dict[int, str] = {}           # row -> text already written

  def __call__(self, tokens: np.ndarray, counts: np.ndarray) -> None:
    """tokens int32[B, n], counts int32[B]: row b's new tokens are tokens[b, :counts[b]]."""
    for row, (ids, n) in enumerate(zip(np.asarray(tokens), np.asarray(counts))):
      if n > 0:
        self.tokens.setdefault(row, []).extend(ids[:n].tolist())
        self._flush(row, final=False)

  def finish(self) -> None:
    """Writes whatever was held back (call once generation has returned)."""
    for row in self.tokens:
      self._flush(row, final=True)

  def _flush(self, row: int, final: bool) -> None:
    text = self.tokenizer.decode(self.tokens[row], skip_special_tokens=self.skip_special_tokens)
    done = self.text.get(row, "")
    if not text.startswith(done) or (not final and text.endswith("\ufffd")):
      return
    if len(text) > len(done):
      self.text[row] = text
      self.write(row, text[len(done):])
