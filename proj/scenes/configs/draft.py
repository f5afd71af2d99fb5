"""Drafts for the embedded scenes target (issue 8; docs/embedded-model.md "The drafts").

    python -m train.datagen --config proj/scenes/configs/draft.py --config.target.folder=runs/target/target
    python -m train --config proj/scenes/configs/draft.py:stage=1 --workdir runs/eagle \
        --config.target.folder=runs/target/target
    python -m train --config proj/scenes/configs/draft.py --workdir runs/vispec \
        --config.target.folder=runs/target/target --config.draft.init_from=runs/eagle/draft
    python -m train --config proj/scenes/configs/draft.py:draft=medusa --workdir runs/medusa \
        --config.target.folder=runs/target/target

arg keys: stage (1: EAGLE draft + stage-1 losses, 2: ViSpec + stage-2 losses), draft (override
the kind: eagle / vispec / medusa), num_q (ViSpec adaptor queries; 1: no compressed token),
global_feature (False: ViSpec without its global image feature), records (how many target
answers to generate and train on), merge (the target's spatial merge size: 1 for the stage-3
target's 256 image tokens; longer records), runlocal (a few steps, for a smoke test).
"""

from configs import common
from proj.scenes.configs import target as scenes_target


def get_config(arg=None):
  arg = common.parse_arg(arg, stage=2, draft="", num_q=2, global_feature=True, records=512,
                         merge=2, runlocal=False)
  c = common.draft_config(arg)
  c.draft.overrides.num_q = arg.num_q
  c.draft.overrides.global_feature = arg.global_feature
  c.target.folder = "runs/target/target"   # python -m proj.scenes.train_target ... (export)

  # The target answers scenes questions greedily, prompted as vj.prepare / infer.demo do: no
  # system prompt or instruction, the image before the question, on the last `records` scenes of
  # the train split. Records hold the target's features (training never runs the target).
  c.datagen.update(dict(input=f"tfds:scenes_dataset:train[-{arg.records}:]",
                        tfds_data_dir="data/tfds", system_prompt="", instruction="",
                        image_position="before", image_size=(224, 224), max_new_tokens=704,
                        batch_size=32, chunk_size=128, store_features=True))
  c.data.update(dict(dir="data/drafts", name=f"scenes_{arg.records}", features="precomputed",
                     max_len=832, buckets=(640, 704, 768, 832), eval_fraction=0.03,
                     prefetch=2))

  c.update(dict(batch_size=8, total_steps=600, warmup_steps=30,
                optim=dict(lr=2e-3, clip_value=0.5), log_every=10, eval_every=200,
                eval_batches=4, eval_tau=dict(prompts=0), checkpoint=dict(every=100, keep=2)))
  if arg.merge != 2:
    scenes_target.other_merge(c, arg.merge)
  if arg.runlocal:
    c.update(dict(total_steps=10, eval_every=10, eval_batches=1, checkpoint=dict(every=5)))
  return c
