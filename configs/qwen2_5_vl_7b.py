"""ViSpec draft for Qwen2.5-VL-7B-Instruct on a TPU pod (or a GPU node): the reference recipe
(vispec-reference.md section 6). Not run in tests.

Stage 1, EAGLE draft on text (ShareGPT conversations with their original answers, written as a
JSONL of {"question", "answer"}):

    python -m train.datagen --config configs/qwen2_5_vl_7b.py:stage=1
    python -m train --config configs/qwen2_5_vl_7b.py:stage=1 --workdir gs://.../stage1 \
        --distributed

Stage 2, ViSpec draft initialised from stage 1, on LLaVA-Pretrain prompts answered by the
target itself (JSONL of {"question", "image"}; the long-answer instruction is appended):

    python -m train.datagen --config configs/qwen2_5_vl_7b.py \
        --config.datagen.worker=$HOST --config.datagen.num_workers=$NUM_HOSTS
    python -m train --config configs/qwen2_5_vl_7b.py --workdir gs://.../stage2 --distributed \
        --config.draft.init_from=gs://.../stage1/draft

Every host runs the same command; `--distributed` lets jax.distributed find its peers.
"""

from configs import common


def get_config(arg=None):
  arg = common.parse_arg(arg, stage=2, target="ckpt/Qwen2.5-VL-7B-Instruct",
                         data="/data/vispec", runlocal=False)
  c = common.draft_config(arg)
  c.target.folder = arg.target
  c.target.dtype = "bfloat16"        # the frozen target; the draft trains in float32

  # reference: greedy, 1024 new tokens
  c.datagen.update(dict(max_new_tokens=1024, batch_size=32, chunk_size=512))
  if arg.stage == 1:
    c.datagen.update(dict(input=f"{arg.data}/sharegpt_68k.jsonl",  # with "answer": kept
                          image_size=None, system_prompt="You are a helpful assistant.",
                          instruction=""))
    c.data.name = "qwen2_5_vl_7b_stage1"
  else:
    c.datagen.input = f"{arg.data}/llava_pretrain_68k.jsonl"
    c.datagen.image_size = (448, 448)  # 256 vision tokens (the reference's min_pixels)
    c.data.name = "qwen2_5_vl_7b_stage2"
  # reference: the last 5% held out
  c.data.update(dict(dir=f"{arg.data}/tfds", max_len=2048, buckets=(512, 1024, 1536, 2048),
                     worker_count=4, eval_fraction=0.05))

  c.batch_size = 64                  # global
  # reference: lr 3e-6 (batch 1 per GPU; scale it up with the batch), clipped by value 0.5
  c.optim.update(dict(lr=3e-6, clip_value=0.5))
  c.mesh = (-1, 8, 1)                # data x fsdp(8) x tensor
  c.update(dict(num_epochs=20, warmup_epochs=1.0, log_every=50, eval_every=2000, eval_batches=16,
                checkpoint=dict(every=1000, keep=3), compilation_cache=f"{arg.data}/xla_cache"))

  if arg.runlocal:  # a few steps on one host, to check the plumbing
    c.update(dict(total_steps=20, batch_size=8, mesh=(1, -1, 1), log_every=1, eval_every=10,
                  eval_batches=1, checkpoint=dict(every=10)))
  return c
