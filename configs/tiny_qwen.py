"""Tiny draft training on a random tiny Qwen2.5-VL: the config the tests run (CPU, seconds).

    python -m train.datagen --config configs/tiny_qwen.py
    python -m train --config configs/tiny_qwen.py --workdir /tmp/vispec_tiny
    python -m train --config configs/tiny_qwen.py:stage=1 --workdir /tmp/vispec_tiny_s1
    python -m train --config configs/tiny_qwen.py:draft=medusa,target=tiny:llava ...
    python -m train --config configs/tiny_qwen.py:runlocal --workdir /tmp/x   # 10 steps

arg keys: stage (1: EAGLE draft + stage-1 losses, 2: ViSpec + stage-2 losses), draft (override
the kind: eagle / vispec / medusa), target (tiny:qwen, tiny:llava, tiny:llava_next or a folder),
features (online / precomputed), runlocal (shrink to a smoke test).
"""

from configs import common


def get_config(arg=None):
  arg = common.parse_arg(arg, stage=2, draft="", target="tiny:qwen", features="online",
                         runlocal=False)
  c = common.base_config()
  common.set_stage(c, arg.stage)
  if arg.draft:
    c.draft.kind = arg.draft
  c.target.folder = arg.target

  c.datagen.input = "synthetic:24"
  c.datagen.image_size = (56, 56)
  c.datagen.system_prompt = "You are a helpful assistant."
  c.datagen.max_new_tokens = 32
  c.datagen.batch_size = 8
  c.datagen.chunk_size = 8
  c.datagen.store_features = arg.features == "precomputed"

  c.data.dir = "/tmp/vispec_tiny_data"
  c.data.name = f"{arg.target.replace(':', '_')}_{arg.features}"
  c.data.features = arg.features
  c.data.max_len = 128
  c.data.buckets = (64, 128)
  c.data.eval_fraction = 0.2
  c.data.prefetch = 1

  c.batch_size = 4
  c.total_steps = 60
  c.warmup_steps = 5
  c.optim.lr = 3e-3
  c.noise.scale = 0.02

  c.log_every = 1
  c.eval_every = 30
  c.eval_batches = 2
  c.checkpoint.every = 10
  c.checkpoint.keep = 2

  if arg.runlocal:
    c.total_steps = 10
    c.eval_every = 10
    c.eval_batches = 1
  return c
