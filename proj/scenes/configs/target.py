"""The embedded target: a Qwen2.5-VL-architecture VLM trained from scratch on the scenes dataset
(issue 8; docs/embedded-model.md "The target").

    python -m proj.scenes.tfds_builder --data-dir data/tfds --train 20000 --validation 500 --test 500
    python -m proj.scenes.generator tokenizer --out data/scenes-tokenizer
    python -m proj.scenes.train_target --config proj/scenes/configs/target.py --workdir runs/target
    python -m proj.scenes.train_target --config proj/scenes/configs/target.py:model=tiny,runlocal --workdir /tmp/t

arg keys: model (a key of SIZES), runlocal (a few steps, for a smoke test), stage (0: the shipped
recipe, end to end on the classic scenes; 1 and 2: issue 16's staged recipe on the bold scenes,
docs/embedded-model.md "Stage 1"; 3: the stage-2 target re-read at 256 image tokens), merge (the
tower's spatial merge: 2 gives 64 tokens per 224 x 224 image, 1 gives 256; data names get a
`_m1` suffix), focus (stages 1-3: the inventories of the TFDS config bold_focus_inventory, two in
three of them after the answer to a question about one colour or shape, so that the answer
depends on the question; measured worse: docs/embedded-model.md "focused inventories"), listed
(stages 2-3: the long answers of the TFDS config bold_listed, which list the objects as the
inventories do; docs/embedded-model.md "Long answers that list their objects as inventories"):

    python -m proj.scenes.tfds_builder --data-dir data/tfds --config bold_inventory
    python -m proj.scenes.train_target --config proj/scenes/configs/target.py:stage=1 \
        --workdir runs/scenes_stage1
    python -m proj.scenes.tfds_builder --data-dir data/tfds --config bold
    python -m proj.scenes.train_target --config proj/scenes/configs/target.py:stage=2 \
        --workdir runs/scenes_stage2
    python -m proj.scenes.train_target --config proj/scenes/configs/target.py:stage=3,merge=1 \
        --workdir runs/scenes_stage3
"""

from ml_collections.config_dict import placeholder

from configs import common

# Model dimensions (proj/scenes/target_folder.py:hf_config). Text: hidden x layers, heads (head_dim =
# hidden / heads), kv_heads (GQA), intermediate (gated MLP). Vision: a small Qwen2.5-VL tower
# (window attention, last block full), 2x2 merge: a 224 x 224 image is 16 x 16 patches of 14
# pixels -> 64 tokens (merge 1: 256).
SIZES = {
    "tiny": dict(hidden=32, layers=2, heads=2, kv_heads=1, intermediate=64, vision_depth=1,
                 vision_hidden=16, vision_heads=1, vision_intermediate=32),
    # 3.70M params (text 2.56M, vision 1.14M): deep and narrow, sized by
    # `python -m proj.scenes.size_target` (docs/embedded-model.md "The target").
    "base": dict(hidden=128, layers=12, heads=2, kv_heads=1, intermediate=384, vision_depth=4,
                 vision_hidden=128, vision_heads=2, vision_intermediate=256),
}
COMMON_DIMS = dict(window_size=112, max_positions=2048, tie=False)


def model_dims(size: str, merge: int = 2) -> dict:
  """config.model for a key of SIZES and a spatial merge size."""
  if size not in SIZES:
    raise ValueError(f"unknown model size {size!r}; known: {sorted(SIZES)}")
  if merge not in (1, 2):
    raise ValueError(f"merge must be 1 or 2, got {merge}")
  return dict(SIZES[size], **COMMON_DIMS, merge=merge)


def image_tokens(image_hw: tuple[int, int], merge: int, patch: int = 14) -> int:
  """LLM tokens per image of that size."""
  return (image_hw[0] // patch // merge) * (image_hw[1] // patch // merge)


def get_config(arg=None):
  arg = common.parse_arg(arg, model="base", runlocal=False, stage=0, merge=2, focus=False,
                         listed=False)
  c = common.without(common.base_config(), *common.DRAFT_ONLY)
  c.model = model_dims(arg.model, arg.merge)
  c.tokenizer = "data/scenes-tokenizer"   # python -m proj.scenes.generator tokenizer --out ...

  # Records: train.datagen over the scenes TFDS train split, keeping its answers (no generation),
  # no system prompt or instruction, the image before the question in even records and after it
  # in odd ones (so the model answers vj.prepare's layout and the reference datagen's).
  # target.folder is set by the trainer (workdir/init: the tokenizer and image processor).
  c.datagen.update(dict(input="tfds:scenes_dataset:train", tfds_data_dir="data/tfds",
                        answer_key="answer", system_prompt="", instruction="",
                        image_position="mixed", image_size=(224, 224), max_new_tokens=1024,
                        batch_size=64, chunk_size=1000))
  # Records are 407-661 tokens (mean 504; 64 image tokens): a batch of 8 pads to 576 (36%),
  # 640 (60%) or 704, three compiled programs.
  c.data.update(dict(dir="data/target", name="scenes_target", max_len=704,
                     buckets=(576, 640, 704), eval_fraction=0.01, prefetch=2))

  # Measured in the first run: 761 tokens/s median (645-812) niced on the shared 2-core CPU,
  # ~5.3 s a step of 8 records (4,000 tokens): 800 steps (6,400 records, 0.32 epoch) in ~75 min.
  # The vision tower at a tenth of the learning rate: at the full rate its output norm grew
  # from 1.4 to 274 in 240 steps (text embeddings: 0.3) and the model ignored the image.
  # Checkpoints every ~3 minutes.
  c.update(dict(batch_size=8, total_steps=800, warmup_steps=40, log_every=10, eval_every=50,
                eval_batches=4, checkpoint=dict(every=20, keep=3),
                optim=dict(lr=3e-3, b1=0.9, b2=0.95, weight_decay=0.01, clip_value=None,
                           clip_norm=1.0, lr_scales={"vision": 0.1})))

  # The objective's weight on answer tokens that are scene words (colours, shapes, sizes,
  # textures, cells, numbers: what the image decides; 1.0: the plain mean). In long answers
  # they are a third of the tokens (4,381 of 13,177 tokens of 32 held-out answers).
  c.scene_word_weight = 1.0

  # At the end (and with --export_only): workdir/target, an HF-style folder (dtype of the
  # stored weights), then the held-out check on `heldout.scenes` validation scenes with greedy
  # answers of up to `heldout.max_new_tokens` tokens (proj/scenes/target_eval.py).
  c.export = dict(dtype="float32")
  c.heldout = dict(input="tfds:scenes_dataset:validation", scenes=16, max_new_tokens=640,
                   batch_size=8)

  # Where the weights start (proj/scenes/train_target.py:init_folder): random unless set.
  c.init = dict(target=placeholder(str), text=placeholder(str), vision=placeholder(str),
                merger=True, scale_tokens=False)
  if arg.stage == 1:
    stage_1(c, arg.focus)
  elif arg.stage == 2:
    stage_2(c, arg.focus, arg.listed)
  elif arg.stage == 3:
    stage_3(c, arg.merge, arg.focus, arg.listed)
  elif arg.stage != 0:
    raise ValueError(f"stage must be 0, 1, 2 or 3, got {arg.stage!r}")
  if arg.listed and arg.stage not in (2, 3):
    raise ValueError("listed picks stage 2's long answers: pass stage=2 or stage=3")
  if arg.merge != 2:
    other_merge(c, arg.merge)

  if arg.runlocal:
    c.update(dict(total_steps=10, warmup_steps=2, eval_every=10, eval_batches=1,
                  checkpoint=dict(every=5), heldout=dict(scenes=2, max_new_tokens=16,
                                                         batch_size=2)))
  return c


def inventory(focus: bool = False) -> dict:
  """Stage 1's records (inventories), which stage 2 mixes in (data.mix): one definition for both,
  so the mix finds stage 1's records (datagen compares these settings) or builds the same ones.
  focus: the TFDS config bold_focus_inventory (answers of 63-140 tokens on 60 held-out scenes,
  against 43-85 for the plain inventories; records up to about 230 tokens)."""
  tfds_config = "bold_focus_inventory" if focus else "bold_inventory"
  return dict(name="scenes_focus_inventory" if focus else "scenes_inventory",
              datagen=dict(input=f"tfds:scenes_dataset/{tfds_config}:train",
                           max_new_tokens=192 if focus else 128))


def stage_1(c, focus: bool = False) -> None:
  """Issue 16, stage 1: the language model (from scratch) and the merger learn to read the
  stage-0 tower (frozen) on short inventories of bold scenes, where nearly every content token
  comes from the image. The tower's tokens enter at the text embeddings' norm (init.scale_tokens;
  its output norm was ~4 against ~0.2 for the embeddings)."""
  c.tokenizer = "models/scenes/target"  # the shipped scenes tokenizer (the same vocabulary)
  c.init.update(dict(vision="models/scenes/stage0", scale_tokens=True))
  # Records: a question (<= 15 tokens), 64 image tokens and a 43-85 token answer (300 held-out
  # bold scenes, the scenes tokenizer): 125-170 tokens.
  records = inventory(focus)
  c.datagen.update(records["datagen"])
  c.data.update(dict(name=records["name"], max_len=256 if focus else 192,
                     buckets=(160, 192, 256) if focus else (160, 192)))
  c.update(dict(batch_size=16, total_steps=2400, warmup_steps=30))
  # The merger frozen too: trained at full lr its tokens' norm rose from 0.2 to 75 and a
  # per-cell probe lost colour (0.85 -> 0.62; docs/embedded-model.md "Stage 1, second run").
  c.optim.lr_scales = {"vision": 0.0}
  c.heldout.update(dict(input=records["datagen"]["input"].replace(":train", ":validation"),
                        max_new_tokens=records["datagen"]["max_new_tokens"]))


def stage_2(c, focus: bool = False, listed: bool = False) -> None:
  """Issue 16, stage 2: the long answers of every question kind on bold scenes, from the
  stage-1 target (its workdir's export), the tower and merger frozen. Half of each batch's rows
  stay stage 1's inventories (data.mix: stage 1's records, or built here) and the peak lr is a
  third of stage 1's: on long answers alone at 3e-3 the image gap fell from 0.38 to 0.05 nats in
  100 steps (docs/embedded-model.md "Stage 2, first run")."""
  c.tokenizer = "models/scenes/target"
  c.init.target = "runs/scenes_stage1/target"
  tfds_config = "bold_listed" if listed else "bold"
  c.datagen.input = f"tfds:scenes_dataset/{tfds_config}:train"
  c.data.name = f"scenes_{tfds_config}"
  c.data.mix = dict(inventory(focus), weight=0.5)
  c.optim.lr = 1e-3
  c.optim.lr_scales = {"vision": 0.0}
  c.heldout.input = f"tfds:scenes_dataset/{tfds_config}:validation"


def stage_3(c, merge: int, focus: bool = False, listed: bool = False) -> None:
  """Issue 16, the adaptor at more image tokens (docs/embedded-model.md "Stage 3"): the stage-2
  target's language model re-reads the stage-0 tower at another merge size (merge=1: 256 tokens
  per image, the regime where the paper's adaptor helps), through a fresh merger trained at the
  stage's lr; the tower stays frozen. Stage 2's data recipe."""
  if merge == 2:
    raise ValueError("stage 3 re-reads the image at another merge size: pass merge=1")
  stage_2(c, focus, listed)
  c.init.update(dict(target=None, text="models/scenes/stage2", vision="models/scenes/stage0",
                     merger=False, scale_tokens=True))
  c.optim.lr_scales = {"vision": 0.0, "vision/merger": 1.0}
  c.total_steps = 900


def other_merge(c, merge: int) -> None:
  """Data of another merge size: its own dataset names (records hold the image tokens) and
  lengths longer by the extra image tokens."""
  extra = (image_tokens(c.datagen.image_size, merge)
           - image_tokens(c.datagen.image_size, 2))
  suffix = f"_m{merge}"
  c.data.name += suffix
  if c.data.get("mix") and c.data.mix.get("name"):
    c.data.mix.name += suffix
  c.data.max_len += extra
  c.data.buckets = tuple(b + extra for b in c.data.buckets)
