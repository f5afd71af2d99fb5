"""The frozen target in training: loading it, and its vision tower on batches of images of ONE
size (datagen resizes every image), so the layout is a constant and the tower runs vmapped inside
the jitted step: `VisionAdapter.pixels(image)` on the host (grain worker), `.encode` on device.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

import vispec_jax as vj
from vispec_jax import models, testing

TINY = {"tiny:qwen": testing.make_tiny_qwen, "tiny:llava": testing.make_tiny_llava,
        "tiny:llava_next": functools.partial(testing.make_tiny_llava, next=True)}

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def resolve_folder(spec: str, cache_dir: str | None = None) -> str:
  """A checkpoint folder, or "tiny:qwen" / "tiny:llava" / "tiny:llava_next": a random tiny
  target written (once) under `cache_dir` (default ~/.cache/vispec_jax)."""
  if spec in TINY:
    cache_dir = cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "vispec_jax")
    folder = os.path.join(cache_dir, spec.replace(":", "-"))
    if not os.path.isfile(os.path.join(folder, "config.json")):
      tmp = f"{folder}.tmp{os.getpid()}"
      TINY[spec](tmp)
      try:
        os.replace(tmp, folder)
      except OSError:  # another process made it first
        pass
    return folder
  if not os.path.isdir(spec):
    raise FileNotFoundError(f"target folder not found: {spec!r} (a checkpoint folder, or one of "
                            f"{sorted(TINY)})")
  return spec


def load_target(spec: str, dtype: str = "float32", cache_dir: str | None = None,
                mesh=None) -> vj.Target:
  """With a `mesh`, every weight goes straight into its sharded layout (no copy on one device)."""
  return vj.load_target(resolve_folder(spec, cache_dir), dtype=DTYPES[dtype], mesh=mesh)


@dataclasses.dataclass(frozen=True, eq=False)
class VisionAdapter:
  """The target's vision tower for images of one size (height, width). Holds no weights (grain
  worker processes pickle it): `encode` takes the vision params."""
  config: Any                 # TargetConfig
  image_processor: Any
  image_hw: tuple[int, int]
  item: Any = dataclasses.field(init=False)  # the VisionInput of a blank image of that size

  @staticmethod
  def for_target(target, image_hw) -> "VisionAdapter":
    return VisionAdapter(target.config, target.image_processor, tuple(int(x) for x in image_hw))

  def __post_init__(self):
    blank = Image.new("RGB", (self.image_hw[1], self.image_hw[0]))
    object.__setattr__(self, "item", self.family.preprocess_image(self.image_processor,
                                                                  self.config, blank))

  @property
  def family(self):
    return models.family(self.config)

  @property
  def num_tokens(self) -> int:
    return self.item.num_tokens

  def pixels(self, image: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] -> the tower's fixed-shape float32 input for one image."""
    if tuple(image.shape[:2]) != tuple(self.image_hw):
      raise ValueError(f"image is {image.shape[:2]}, the dataset's size is {self.image_hw}")
    return self.family.tower_input(self.family.preprocess_image(
        self.image_processor, self.config, Image.fromarray(image)))

  def encode(self, vision_params, pixels: jax.Array) -> jax.Array:
    """[B, ...pixels] -> vision tokens [B, n_tokens, E] (traceable; vmapped over B)."""
    fam, cfg, layout = self.family, self.config.vision, self.item.layout
    dtype = jax.tree.leaves(vision_params)[0].dtype
    return jax.vmap(lambda px: fam.encode_item(vision_params, cfg, px, layout))(
        pixels.astype(dtype))
