"""Run in a subprocess with 8 fake CPU devices (XLA_FLAGS set by the caller before jax loads).

python tests/sharding_worker.py FOLDER MESH [MESH ...] -> prints one JSON line: per mesh, the
greedy tokens of vanilla and speculative decoding (random EAGLE draft) and per-device shard
shapes of some parameters. MESH "none" runs unsharded on one device.
"""

import contextlib
import dataclasses
import json
import sys

import jax
import numpy as np

import vispec_jax as vj
from vispec_jax import draft, sharding, testing
from vispec_jax.models import decoder

def run(folder, mesh_spec):
  mesh = None if mesh_spec == "none" else sharding.make_mesh(mesh_spec)
  target = vj.load_target(folder, mesh=mesh)
  target = dataclasses.replace(target, config=dataclasses.replace(target.config, eos_token_ids=()))
  prompts = ["Describe the image.", "What colour is the square?", "hi", "Where is the star?",
             "How many circles?", "Answer yes or no.", "Describe it in detail.", "What is shown?"]
  images = [[testing.scene_image(112, 84, i)] if i % 2 == 0 else [] for i in range(8)]
  batch = vj.prepare(target, prompts, images=images)
  if mesh is not None:
    batch = sharding.shard_batch(batch, mesh)
  dcfg = draft.DraftConfig.for_target(target.config.text)
  dparams = draft.init_params(dcfg, jax.random.PRNGKey(1))
  if mesh is not None:
    dparams = sharding.shard_params(dparams, mesh, dcfg.head_dim)
  # Under the mesh, the KV caches created inside the programs follow the rules (sharding.constrain).
  with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
    vanilla = vj.generate(target, batch, 16)
    spec = vj.speculative_generate(target, draft.EagleDrafter(dcfg), dparams, batch,
                                   max_new_tokens=16)
    cache = jax.jit(lambda: decoder.init_cache(target.config.text, 8, 32))()
  text = target.params["text"]
  shards = {
      "q_kernel": text["layers"][0]["attn"]["q"]["kernel"],
      "mlp_up": text["layers"][0]["mlp"]["up"]["kernel"],
      "embed": text["embed"],
      "kv_cache": cache[0][0],
  }
  return {
      "vanilla": np.asarray(vanilla.tokens).tolist(),
      "spec": np.asarray(spec.tokens).tolist(),
      "shards": {k: list(v.addressable_shards[0].data.shape) for k, v in shards.items()},
      "devices": jax.device_count(),
  }


if __name__ == "__main__":
  print(json.dumps({m: run(sys.argv[1], m) for m in sys.argv[2:]}))
