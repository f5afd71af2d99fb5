"""The scenes dataset (`proj.scenes.generator`) as a TFDS builder, written as ArrayRecord shards and
read without TensorFlow (`tfds.data_source`, grain).

    python -m proj.scenes.tfds_builder --data-dir DIR --train 20000 --validation 500 --test 500
    python -m proj.scenes.tfds_builder --data-dir DIR --config bold_inventory   # issue 16 stage 1
    python -m proj.scenes.tfds_builder --data-dir DIR --config bold_focus_inventory  # focus=True

    import tensorflow_datasets as tfds
    import proj.scenes.tfds_builder  # registers "scenes_dataset" (optional once built: TFDS
                                   # also finds a built dataset in data_dir by its name)
    src = tfds.data_source("scenes_dataset", split="validation", data_dir=DIR)
    ex = src[0]  # {"image": uint8[224, 224, 3], "question": bytes, "answer": bytes,
                 #  "kind": bytes, "seed": int64, "scene": bytes (JSON)}

Splits draw disjoint seed ranges (train from 0, validation from 10^8, test from 2 x 10^8, plus
`seed_offset`), so held-out scenes never appear in training. Example i of a split is
`scenes.sample(base + i)`: rebuilding gives the same records, and the builder is importable by
name (grain worker processes unpickle the data source through it).

Text features are stored as `tfds.features.Text` (bytes when read back); the image is a uint8
Tensor feature with zlib encoding (`tfds.features.Image` needs TensorFlow to encode).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from proj.scenes import generator as scenes

NAME = "scenes_dataset"


@dataclasses.dataclass(eq=False)
class ScenesConfig(tfds.core.BuilderConfig):
  """Image side, question kinds and seed offset of a build (split sizes are builder arguments:
  they do not change what an example is)."""
  image_size: int = 224
  kinds: tuple[str, ...] = tuple(scenes.KINDS)
  seed_offset: int = 0
  style: str = scenes.DEFAULT_STYLE
  listing: str = scenes.DEFAULT_LISTING  # how long answers list the objects (generator.sections)


CONFIGS = [ScenesConfig(name="default", description="224 x 224 scenes (64 Qwen2.5-VL tokens)")] + [
    ScenesConfig(name=f"size{s}", image_size=s, description=f"{s} x {s} scenes")
    for s in (112, 336, 448)] + [
    # Issue 16's staged recipe: bold scenes (generator.STYLES), short image-dense inventories
    # (stage 1) and the long answers (stage 2).
    ScenesConfig(name="bold_inventory", style="bold", kinds=("inventory",),
                 description="224 x 224 bold scenes, inventory answers (30-80 tokens)"),
    ScenesConfig(name="bold_focus_inventory", style="bold", kinds=tuple(scenes.SHORT_KINDS),
                 description="224 x 224 bold scenes, inventories, two in three of them after "
                             "the answer to a question about one colour or shape"),
    ScenesConfig(name="bold", style="bold", description="224 x 224 bold scenes, long answers"),
    ScenesConfig(name="bold_listed", style="bold", listing="inventory",
                 description="224 x 224 bold scenes, long answers that list the objects as the "
                             "inventories do")]


def config_name(image_size: int) -> str:
  for c in CONFIGS:
    if c.image_size == image_size:
      return c.name
  raise ValueError(f"no scenes config with image size {image_size}; have "
                   f"{[c.image_size for c in CONFIGS]}")


class ScenesDataset(tfds.core.GeneratorBasedBuilder,
                    skip_registration=__name__ == "__main__"):  # `python -m` registers on import
  """Procedural scenes of shapes with questions and long (>= 300 token) answers."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = CONFIGS
  DEFAULT_BUILDER_CONFIG_NAME = "default"

  def __init__(self, *, train: int = 20_000, validation: int = 500, test: int = 500, **kwargs):
    """Split sizes (used when building; a built dataset keeps the sizes it was built with)."""
    self._sizes = {"train": train, "validation": validation, "test": test}
    super().__init__(**kwargs)

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    # TFDS's own lookup goes through importlib_resources for package modules, which this
    # environment lacks (ModuleNotFoundError on download_and_prepare); this file is the answer.
    return epath.Path(os.path.abspath(__file__))

  def _info(self) -> tfds.core.DatasetInfo:
    c = self.builder_config
    s = c.image_size
    not_default = {}  # style and listing go into the metadata where they are not the defaults
    if c.style != scenes.DEFAULT_STYLE:
      not_default["style"] = c.style
    if c.listing != scenes.DEFAULT_LISTING:
      not_default["listing"] = c.listing
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__.split("\n")[0],
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(s, s, 3), dtype=np.uint8, encoding="zlib"),
            "question": tfds.features.Text(),
            "answer": tfds.features.Text(),
            "kind": tfds.features.Text(),
            "seed": np.int64,
            "scene": tfds.features.Text(),  # the scene dict as JSON
        }),
        metadata=tfds.core.MetadataDict(
            image_size=s, kinds=list(c.kinds), **not_default,
            split_seeds={k: v + c.seed_offset for k, v in scenes.SPLIT_SEEDS.items()}),
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    c = self.builder_config
    return {split: self._generate_examples(scenes.SPLIT_SEEDS[split] + c.seed_offset, n)
            for split, n in self._sizes.items() if n > 0}

  def _generate_examples(self, base: int, n: int):
    c = self.builder_config
    for i in range(n):
      ex = scenes.sample(base + i, c.image_size, kinds=c.kinds, style=c.style, listing=c.listing)
      yield i, {"image": np.asarray(ex["image"], np.uint8), "question": ex["question"],
                "answer": ex["answer"], "kind": ex["kind"], "seed": ex["seed"],
                "scene": json.dumps(ex["scene"], sort_keys=True)}


def build(data_dir: str, *, train: int, validation: int, test: int = 0,
          image_size: int = 224, config: str | None = None) -> ScenesDataset:
  """Builds (or finds already built) the dataset under data_dir; returns the builder. `config`
  names a builder config (CONFIGS); by default the classic one of `image_size`."""
  builder = ScenesDataset(data_dir=data_dir, train=train, validation=validation, test=test,
                          config=config or config_name(image_size), file_format="array_record")
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(verify_ssl=False, try_download_gcs=False))
  return builder


def decode_text(x) -> str:
  """A Text feature read back by `tfds.data_source` (bytes) as str."""
  return x.decode() if isinstance(x, bytes) else str(x)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(prog="python -m proj.scenes.tfds_builder",
                               description="Build the scenes TFDS dataset (ArrayRecord).")
  ap.add_argument("--data-dir", required=True)
  ap.add_argument("--train", type=int, default=20_000)
  ap.add_argument("--validation", type=int, default=500)
  ap.add_argument("--test", type=int, default=500)
  ap.add_argument("--image-size", type=int, default=224,
                  choices=sorted({c.image_size for c in CONFIGS}))
  ap.add_argument("--config", choices=[c.name for c in CONFIGS],
                  help="a builder config by name (default: the classic scenes of --image-size)")
  args = ap.parse_args(argv)
  builder = build(args.data_dir, train=args.train, validation=args.validation, test=args.test,
                  image_size=args.image_size, config=args.config)
  sizes = {k: v.num_examples for k, v in builder.info.splits.items()}
  print(f"{NAME} at {builder.data_dir}: {sizes}")
  if any(sizes.get(k, 0) != n for k, n in (("train", args.train), ("validation", args.validation),
                                           ("test", args.test)) if n):
    print(f"note: a dataset with other split sizes was already built in {builder.data_dir}; "
          "remove it (or use another --data-dir) to rebuild", file=sys.stderr)
  return 0


if __name__ == "__main__":
  # Build with the importable module's class (grain workers and pickles find it by name).
  from proj.scenes import tfds_builder as _module
  sys.exit(_module.main())
