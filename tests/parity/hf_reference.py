"""Building transformers reference models and feeding them our batches."""

import numpy as np
import torch

from vispec_jax import testing  # noqa: E402


def build_hf_qwen(folder, *, tie=False, init_range=0.2, dtype=None, shard=None, **kwargs):
  """Writes a random transformers Qwen2.5-VL (larger init than default, so logits vary) with
  `save_pretrained`, plus our tiny tokenizer and processor config; returns the torch model."""
  from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
  tok = testing.tiny_tokenizer()
  raw = testing.tiny_qwen_config(tok, tie=tie, **kwargs)
  raw["text_config"]["initializer_range"] = init_range
  raw["vision_config"]["initializer_range"] = init_range
  raw["initializer_range"] = init_range
  cfg = Qwen2_5_VLConfig(**{k: v for k, v in raw.items() if k not in ("architectures", "model_type")})
  torch.manual_seed(0)
  model = Qwen2_5_VLForConditionalGeneration(cfg).eval()
  if dtype is not None:
    model = model.to(dtype)
  model.save_pretrained(folder, **({"max_shard_size": shard} if shard else {}))
  testing.write_tokenizer_and_processor(tok, folder)
  return model


def hf_inputs(batch, cfg, rows):
  """transformers kwargs for the given rows of one of our Batches (left padding kept)."""
  ids = batch.input_ids[rows]
  mask = batch.attention_mask[rows]
  kinds = np.zeros_like(ids)
  kinds[ids == cfg.image_token_id] = 1
  kinds[ids == cfg.video_token_id] = 2
  kinds[~mask] = 0
  kw = {"input_ids": torch.tensor(ids).long(), "attention_mask": torch.tensor(mask).long(),
        "mm_token_type_ids": torch.tensor(kinds).long()}
  # Vision items belonging to these rows, in order.
  per_row, k = [], 0
  for r in range(batch.batch_size):
    n = int(np.isin(batch.input_ids[r][batch.attention_mask[r]],
                    [cfg.image_token_id, cfg.video_token_id]).sum())
    items = []
    while n > 0:
      items.append(batch.vision[k]); n -= batch.vision[k].num_tokens; k += 1
    per_row.append(items)
  items = [it for r in rows for it in per_row[r]]
  imgs = [it for it in items if it.kind == "image"]
  vids = [it for it in items if it.kind == "video"]
  if imgs:
    kw["pixel_values"] = torch.tensor(np.concatenate([it.patches for it in imgs]))
    kw["image_grid_thw"] = torch.tensor([it.grid_thw for it in imgs])
  if vids:
    kw["pixel_values_videos"] = torch.tensor(np.concatenate([it.patches for it in vids]))
    kw["video_grid_thw"] = torch.tensor([it.grid_thw for it in vids])
    kw["second_per_grid_ts"] = torch.tensor([it.seconds_per_grid for it in vids])
  return kw


def assert_same_greedy(ours: list[list[int]], ref, prompt_len: int, eos_ids) -> None:
  """Our trimmed greedy rows equal transformers' `generate` output (prompt cut off, each row
  ending at its first EOS as ours do)."""
  eos = set(eos_ids)
  for i, tokens in enumerate(ours):
    expected = []
    for t in ref[i, prompt_len:].tolist():
      expected.append(t)
      if t in eos:
        break
    assert tokens == expected, f"row {i}"
