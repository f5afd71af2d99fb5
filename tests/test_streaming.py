"""Streaming (`on_tokens`): the pieces of every row join to the final answer, for vanilla and
speculative decoding, and the default program has no host callback."""

import jax
import numpy as np
import pytest

import vispec_jax as vj
from vispec_jax import draft, testing
from vispec_jax.engine import decoding

MAX_NEW = 12


@pytest.fixture(scope="module")
def target(tiny_qwen_dir):
  return vj.load_target(tiny_qwen_dir)


@pytest.fixture(scope="module")
def batch(target):
  return vj.prepare(target, ["Describe the image.", "hi"],
                    images=[[testing.scene_image(112, 84, 1)], []])


class Recorder:
  """A TextStreamer whose writes are kept per row, with the raw ids it was sent."""

  def __init__(self, tokenizer):
    self.pieces = {}
    self.streamer = vj.TextStreamer(tokenizer, write=self.write)

  def write(self, row, text):
    self.pieces.setdefault(row, []).append(text)


def _check(target, out, rec):
  rec.streamer.finish()
  for row, tokens in enumerate(vj.trim(out)):
    assert rec.streamer.tokens[row] == tokens
    answer = target.tokenizer.decode(tokens, skip_special_tokens=True)
    assert "".join(rec.pieces.get(row, [])) == answer


def test_vanilla_stream_joins_to_answer(target, batch):
  rec = Recorder(target.tokenizer)
  out = vj.generate(target, batch, max_new_tokens=MAX_NEW, on_tokens=rec.streamer)
  assert len(rec.pieces[0]) > 1  # really streamed, not one piece at the end
  _check(target, out, rec)
  plain = vj.generate(target, batch, max_new_tokens=MAX_NEW)
  np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(plain.tokens))


def test_speculative_stream_joins_to_answer(target, batch):
  cfg = vj.DraftConfig.for_target(target.config.text, kind="vispec")
  params = draft.init_params(cfg, jax.random.PRNGKey(0))
  rec = Recorder(target.tokenizer)
  out = vj.speculative_generate(target, vj.make_drafter(cfg), params, batch,
                                tree=vj.TreeConfig(depth=2, top_k=3, total_tokens=6),
                                max_new_tokens=MAX_NEW, on_tokens=rec.streamer)
  _check(target, out, rec)
  plain = vj.generate(target, batch, max_new_tokens=MAX_NEW)
  np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(plain.tokens))


class FakeTokenizer:
  """Byte-level decoding like a BPE tokenizer: id = one byte."""

  def decode(self, ids, skip_special_tokens=True):
    return bytes(ids).decode("utf-8", errors="replace")


def test_incomplete_characters_are_held_back():
  pieces = []
  s = vj.TextStreamer(FakeTokenizer(), write=lambda row, text: pieces.append(text))
  data = list("é!".encode()) + [0xE2, 0x82]  # é is 2 bytes; the tail is a cut 3-byte character
  for b in data:
    s(np.asarray([[b]]), np.asarray([1]))
  assert pieces == ["é", "!"]
  s.finish()
  assert "".join(pieces) == bytes(data).decode("utf-8", errors="replace")


def test_default_program_has_no_callback(target, batch):
  embeds = target.embed(target.params, batch)
  args = (target.params["text"], embeds, batch.positions, batch.attention_mask,
          batch.next_position, jax.random.PRNGKey(0), np.float32(1e-6), np.float32(1.0))
  kwargs = dict(cfg=target.config.text, max_new_tokens=4, greedy=True, top_k=0, use_top_p=False,
                eos_ids=(), pad_id=0)
  assert "callback" not in decoding._generate.lower(*args, **kwargs).as_text()
  streamed = decoding._generate.lower(*args, **kwargs, on_tokens=print).as_text()
  assert "callback" in streamed
