"""Stage 0 of issue 16: the scenes target's vision tower trained to see, with a direct supervised
objective from the scene's ground truth (per grid cell: occupied, colour, shape, size, texture;
docs/embedded-model.md "Stage 0").

    python -m proj.scenes.vision_pretrain --config proj/scenes/configs/vision.py --workdir /work/runs/stage0
    python -m proj.scenes.vision_pretrain --config proj/scenes/configs/vision.py --workdir /work/runs/stage0 \
        --export_only --config.export.dir=models/scenes/stage0
    python -m proj.scenes.vision_pretrain --config proj/scenes/configs/vision.py:model=tiny,runlocal --workdir /tmp/v

arg keys: model (a key of proj/scenes/configs/target.py SIZES: the target's tower dimensions),
runlocal (a few steps, for a smoke test).
"""

from ml_collections.config_dict import placeholder

from configs import common
from proj.scenes.configs import target as scenes_target


def get_config(arg=None):
  arg = common.parse_arg(arg, model="base", runlocal=False)
  c = common.without(common.base_config(), *common.DRAFT_ONLY, "datagen", "data", "target",
                     "num_epochs", "warmup_epochs")
  # The target's dimensions (its config.json comes from them,
  # proj/scenes/target_folder.py:hf_config); only the vision part is trained here.
  c.model = scenes_target.model_dims(arg.model)
  # A folder with the target's tokenizer (special-token ids of config.json) and
  # preprocessor_config.json: pixels go through the processor the target uses.
  c.folder = "models/scenes/target"

  # Scenes drawn on the fly: batch i holds seeds first_seed + i * batch_size + [0, batch_size)
  # (the train range, below scenes.SPLIT_SEEDS["validation"]); `options` are keyword options of
  # scenes.make_scene. The "bold" style (bigger objects, no hexagon): on the classic scenes shape
  # stayed near chance for 45 minutes and reached 0.42 after 71 (docs/embedded-model.md).
  c.scenes = dict(image_size=224, first_seed=0, options={"style": "bold"})

  # The probe head (dropped after this stage): one learned query per grid cell attends over the
  # merged tokens (keys get a learned position per token: the tower's tokens carry only relative
  # positions), then an MLP and one linear layer to the logits of every attribute.
  # position_weight > 0 adds a second objective: every merged token's own row and column in the
  # token grid, read by one linear layer per token (vision_pretrain.position_loss), so that a
  # token says where it is and the language model can find a cell by content.
  c.head = dict(dim=128, heads=4, mlp=256, position_weight=0.0)
  # The tower's starting weights: random, or an exported stage-0 tower (a folder).
  c.init = placeholder(str)

  # Measured: 6 s a step of 32 scenes when the shared 2-core CPU was at load 4-7 (5 scenes/s),
  # 15 s at load ~7 with other jobs (2.4 scenes/s): the ~90 minutes this stage had there hold
  # 15-25k scenes. Batch 16 gives twice the updates of batch 32 for the same scenes.
  # lr 3e-3 made the tower's output norm grow ~60x in 300 steps (issue 16); with 1e-3, warmup
  # and global-norm clipping it rose from 1.4 to ~4 in warmup, then stayed at 3.4-5.4 through
  # step 1,151 (metrics `token_norm`). Held-out accuracy (validation seeds) every eval_every
  # steps, written to metrics.jsonl; checkpoints every ~2 minutes.
  c.update(dict(batch_size=16, total_steps=1200, warmup_steps=100, log_every=20, eval_every=60,
                eval_scenes=192, checkpoint=dict(every=20, keep=3),
                optim=dict(lr=1e-3, b1=0.9, b2=0.99, weight_decay=0.01, clip_value=None,
                           clip_norm=1.0)))
  c.export = dict(dir=placeholder(str))   # default: workdir/stage0

  if arg.runlocal:
    c.update(dict(batch_size=4, total_steps=6, warmup_steps=2, log_every=2, eval_every=3,
                  eval_scenes=8, checkpoint=dict(every=3),
                  head=dict(dim=16, heads=2, mlp=32, position_weight=0.0)))
  return c
