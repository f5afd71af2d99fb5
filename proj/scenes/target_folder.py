"""The trained-from-scratch target as a Hugging Face-style folder: its config.json from the
experiment's model dimensions, and writing params + tokenizer + processor so that
`vj.load_target(folder)` and `python -m infer.generate --model folder` read it.

The dimensions live in the training config (`config.model`, see proj/scenes/configs/target.py); the
config.json is the tiny test layout of `vispec_jax.testing` with those sizes filled in, so the
special-token ids, chat template and preprocessor settings are the ones the library's tests use.
"""

from __future__ import annotations

import json
import os

from proj.scenes import generator
from vispec_jax import checkpoints, testing

# A shipped target's manifest: its recipe, evaluations and the scene style it was trained on.
MANIFEST = "scenes.json"


def hf_config(tokenizer, m) -> dict:
  """config.json (transformers-5 Qwen2.5-VL layout) for model dimensions `m` (a mapping with
  hidden, layers, heads, kv_heads, intermediate, vision_depth, vision_hidden, vision_heads,
  vision_intermediate, window_size, max_positions, tie, and optionally merge: the spatial merge
  size, 2 if absent) and the tokenizer's vocabulary."""
  raw = testing.tiny_qwen_config(tokenizer, hidden=m["hidden"], layers=m["layers"],
                                 heads=m["heads"], kv_heads=m["kv_heads"],
                                 vision_depth=m["vision_depth"], vision_hidden=m["vision_hidden"],
                                 tie=m["tie"])
  raw["text_config"].update(intermediate_size=m["intermediate"],
                            max_position_embeddings=m["max_positions"])
  raw["vision_config"].update(num_heads=m["vision_heads"],
                              intermediate_size=m["vision_intermediate"],
                              window_size=m["window_size"],
                              fullatt_block_indexes=[m["vision_depth"] - 1],
                              spatial_merge_size=m.get("merge", 2))
  return raw


def recorded_style(folder: str) -> str:
  """The scene style in `folder`'s manifest (scenes.json), or the generator's default for a folder
  without one: a target answers only the scenes it was trained on."""
  path = os.path.join(folder, MANIFEST)
  if not os.path.isfile(path):
    return generator.DEFAULT_STYLE
  with open(path) as f:
    style = json.load(f).get("style", generator.DEFAULT_STYLE)
  if style not in generator.STYLES:
    raise ValueError(f"{path}: unknown scene style {style!r} (known: {sorted(generator.STYLES)})")
  return style


def load_tokenizer(path: str):
  """The scenes tokenizer folder (`python -m proj.scenes.generator tokenizer --out path`)."""
  from transformers import PreTrainedTokenizerFast
  if not os.path.isfile(os.path.join(path, "tokenizer.json")):
    raise FileNotFoundError(f"no tokenizer at {path}: run `python -m proj.scenes.generator tokenizer "
                            f"--out {path}` first")
  tok = PreTrainedTokenizerFast.from_pretrained(path)
  if tok.chat_template is None:
    tok.chat_template = testing.CHAT_TEMPLATE
  return tok


def write(folder: str, raw: dict, params, name_map, tokenizer, dtype=None,
          extra: dict | None = None) -> str:
  """Writes config.json, model.safetensors (`dtype`: e.g. bfloat16 storage), the tokenizer with
  its chat template, preprocessor_config.json and `extra` ({file name: JSON-able}), atomically
  (`checkpoints.write_folder`)."""
  def fill(tmp):
    checkpoints.save_hf(params, name_map, os.path.join(tmp, "model.safetensors"), dtype=dtype)
    for name, value in {"config.json": raw, **(extra or {})}.items():
      with open(os.path.join(tmp, name), "w") as f:
        json.dump(value, f, indent=1)
    merge = raw["vision_config"]["spatial_merge_size"]  # the processor's must be the tower's
    testing.write_tokenizer_and_processor(
        tokenizer, tmp, {"image_processor_type": "Qwen2VLImageProcessor", **testing.PREPROCESSOR,
                         "merge_size": merge})
  return checkpoints.write_folder(folder, fill)
