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
  c = common.draft_config(arg)
  c.target.folder = arg.target
  c.datagen.update(dict(input="synthetic:24", image_size=(56, 56),
                        system_prompt="You are a helpful assistant.", max_new_tokens=32,
                        batch_size=8, chunk_size=8, store_features=arg.features == "precomputed"))
  c.data.update(dict(dir="/tmp/vispec_tiny_data",
                     name=f"{arg.target.replace(':', '_')}_{arg.features}", features=arg.features,
                     max_len=128, buckets=(64, 128), eval_fraction=0.2, prefetch=1))
  c.update(dict(batch_size=4, total_steps=60, warmup_steps=5, log_every=1, eval_every=30,
                eval_batches=2, optim=dict(lr=3e-3), noise=dict(scale=0.02),
                checkpoint=dict(every=10, keep=2)))
  if arg.runlocal:
    c.update(dict(total_steps=10, eval_every=10, eval_batches=1))
  return c
