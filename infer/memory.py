"""Per-device memory of a target (+ ViSpec draft) on device meshes, from shapes only: no weights
are read, the sharding rules in vispec_jax/sharding.py decide what each device holds.

    python -m infer.memory                       # Qwen2.5-VL-7B, bf16, meshes of 1, 4 and 8 devices
    python -m infer.memory --config ckpt/X/config.json --batch 8 --length 4096
"""

from __future__ import annotations

import argparse
import json
import math

import jax.numpy as jnp

from infer import cli
from vispec_jax import draft, models, sharding

# Qwen/Qwen2.5-VL-7B-Instruct config.json (the fields that set shapes).
QWEN2_5_VL_7B = {
    "architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl",
    "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
    "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
    "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "max_position_embeddings": 128000,
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]}, "tie_word_embeddings": False,
    "image_token_id": 151655, "video_token_id": 151656, "eos_token_id": 151645,
    "vision_config": {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
                      "out_hidden_size": 3584, "patch_size": 14, "window_size": 112,
                      "fullatt_block_indexes": [7, 15, 23, 31], "spatial_merge_size": 2,
                      "temporal_patch_size": 2, "tokens_per_second": 2},
}

MESHES = ["data=1", "tensor=4", "data=2,tensor=2", "tensor=8", "data=2,tensor=4"]


def report(raw: dict, batch: int, length: int, dtype) -> list[dict]:
  """A row per mesh of MESHES: GiB per device of the target's and the draft's params and of
  the target's KV cache (`batch` rows of `length` slots)."""
  cfg = models.config_from_hf(raw)
  shapes = models.family(cfg).param_shapes(cfg, dtype)
  dcfg = draft.DraftConfig.for_target(cfg.text, kind="vispec")
  dshapes = draft.param_shapes(dcfg, dtype)
  head_dims = {"text": cfg.text.head_dim, "vision": cfg.vision.head_dim}
  itemsize, gib = jnp.dtype(dtype).itemsize, 1024 ** 3
  rows = []
  for spec in MESHES:
    mesh = sharding.MeshShape(**{k: int(v) for k, v in (p.split("=") for p in spec.split(","))})
    row = {"mesh": spec, "devices": math.prod(mesh.shape.values()),
           "target_params_gib": sharding.bytes_per_device(shapes, mesh, head_dims) / gib,
           "draft_params_gib": sharding.bytes_per_device(dshapes, mesh, dcfg.head_dim) / gib,
           "target_kv_gib": sharding.kv_cache_bytes_per_device(cfg.text, batch, length, mesh,
                                                               itemsize) / gib}
    row["total_gib"] = row["target_params_gib"] + row["draft_params_gib"] + row["target_kv_gib"]
    rows.append(row)
  return rows


def main(argv=None) -> int:
  """Bad options or config files: one `error:` line, exit 2 (infer/cli.py)."""
  return cli.run(lambda: _main(argv))


def _main(argv) -> int:
  ap = cli.ArgumentParser(prog="python -m infer.memory", description=__doc__,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--config", help="a config.json (default: Qwen2.5-VL-7B-Instruct)")
  ap.add_argument("--batch", type=int, default=4)
  ap.add_argument("--length", type=int, default=4096, help="KV cache slots per row")
  ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
  ap.add_argument("--json", action="store_true")
  args = ap.parse_args(argv)
  cli.check_int("--batch", args.batch, 1)
  cli.check_int("--length", args.length, 1)
  raw = QWEN2_5_VL_7B
  if args.config:
    with open(args.config, encoding="utf-8") as f:
      try:
        raw = json.load(f)
      except json.JSONDecodeError as e:
        raise cli.UsageError(f"--config {args.config}: not valid JSON ({e.msg})") from None
    if not isinstance(raw, dict):
      raise cli.UsageError(f"--config {args.config}: expected a JSON object")
  rows = report(raw, args.batch, args.length, getattr(jnp, args.dtype))
  if args.json:
    print(json.dumps(rows))
    return 0
  print(f"per-device GiB, {args.dtype}, batch {args.batch}, cache {args.length} slots")
  print(f"{'mesh':<18}{'devices':>8}{'target':>9}{'draft':>8}{'KV':>8}{'total':>8}")
  for r in rows:
    print(f"{r['mesh']:<18}{r['devices']:>8}{r['target_params_gib']:>9.2f}"
          f"{r['draft_params_gib']:>8.2f}{r['target_kv_gib']:>8.2f}{r['total_gib']:>8.2f}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
