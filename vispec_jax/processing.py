"""The host side of prompting (NumPy): images, videos and user options checked and loaded, and
the fixed-shape `Batch` they become (rows left-padded to bucketed lengths, so that a new prompt
length rarely means a new compiled program)."""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_MARKER = "<image>"  # where a prompt wants its images; otherwise images go first
MAX_IMAGE_PIXELS = 50_000_000  # refuse before decoding: processors downscale far below this


class InputError(ValueError):
  """Bad user input (image, prompt, options): the message says which and what was expected."""


@dataclasses.dataclass
class VisionInput:
  """One image or video after preprocessing."""
  kind: str                      # "image" or "video"
  patches: np.ndarray            # pixels as the family's vision tower takes them
  num_tokens: int                # LLM tokens this item becomes
  grid_thw: tuple[int, int, int] = (1, 1, 1)
  seconds_per_grid: float = 1.0  # videos: time covered by one temporal patch
  layout: object = None          # family-specific host layout (e.g. Qwen window order)


@dataclasses.dataclass
class Batch:
  """A padded batch of B prompts of (bucketed) length P.

  input_ids: int32[B, P] left-padded; attention_mask: bool[B, P];
  positions: int32[3, B, P] (mRoPE) or int32[B, P]; next_position: int32[B], the position of
  the first generated token; vision: every image/video of every row, in prompt order;
  vision_index: int32[B, P], index of each vision token into the concatenated vision tokens
  (-1 for text); prompt_lengths: int32[B].
  """
  input_ids: np.ndarray
  attention_mask: np.ndarray
  positions: np.ndarray
  next_position: np.ndarray
  vision: list[VisionInput]
  vision_index: np.ndarray
  prompt_lengths: np.ndarray

  @property
  def batch_size(self) -> int:
    return self.input_ids.shape[0]


def bucket(n: int, multiple: int = 1) -> int:
  """n rounded up to a power of two times `multiple` (bounds the number of compiles)."""
  units = max(1, -(-n // multiple))
  return multiple * (1 << (units - 1).bit_length())


def bucket_length(n: int, minimum: int = 32) -> int:
  """Prompt length buckets: powers of two up to 1024, then multiples of 512."""
  if n <= 1024:
    return max(minimum, 1 << max(0, n - 1).bit_length())
  return -(-n // 512) * 512


def load_image(image) -> Image.Image:
  """A PIL image, a path or an HxWx3 uint8 array (NumPy or JAX) -> RGB PIL image, with one
  clear error for every bad file or array."""
  if isinstance(image, Image.Image):
    img = image
  elif _is_array(image):
    a = np.asarray(image)
    if a.ndim != 3 or a.shape[2] != 3:
      raise InputError(f"an image array must be HxWx3 (RGB, channels last), got shape {a.shape}")
    if a.dtype != np.uint8:
      raise InputError(f"an image array must be uint8 (0..255), got {a.dtype}: convert it first, "
                       f"e.g. (x * 255).round().astype(np.uint8) for floats in [0, 1]")
    img = Image.fromarray(a, "RGB")
  elif not isinstance(image, (str, bytes, os.PathLike)):
    raise InputError(f"an image must be a PIL image, a file path or an HxWx3 uint8 array, got "
                     f"{type(image).__name__}")
  else:
    path = os.fspath(image)
    if not os.path.exists(path):
      raise InputError(f"image not found: {path}")
    if os.path.isdir(path) or os.path.getsize(path) == 0:
      raise InputError(f"image file is empty or not a file: {path}")
    try:
      img = Image.open(path)  # reads the header only: the size is checked before decoding
      _check_size(img.width, img.height, f"image {path}")
      img.load()
    except InputError:
      raise
    except Image.DecompressionBombError:
      raise InputError(f"image {path} is too large (more than {MAX_IMAGE_PIXELS} pixels); "
                       f"downscale it first") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
      raise InputError(f"cannot read image {path}: {e}") from None
  _check_size(img.width, img.height, "image")
  if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
    # 16-bit / float greyscale: scale to 8 bits before RGB conversion (PIL would clip).
    a = np.asarray(img, dtype=np.float32)
    lo, hi = float(a.min()), float(a.max())
    a = (a - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(a)
    img = Image.fromarray(a.astype(np.uint8))
  return img.convert("RGB")


def _is_array(x) -> bool:
  return isinstance(x, np.ndarray) or (hasattr(x, "__array__") and hasattr(x, "shape"))


def _is_single(x) -> bool:
  """One image/frame/path (where a list of them belongs)."""
  return isinstance(x, (str, bytes, os.PathLike, Image.Image)) or _is_array(x)


def per_row(value, rows: int, name: str, item: str) -> list[list]:
  """`images=` / `videos=` of `prepare`: None, or one entry per prompt, each None or a list of
  that prompt's items. A flat list (images=[img] instead of [[img]]) is named as such."""
  if value is None or (isinstance(value, (list, tuple)) and not value):
    return [[] for _ in range(rows)]
  example = f"{name}=[[{item}]] for one prompt with one {item}"
  if _is_single(value) or not isinstance(value, (list, tuple)):
    raise InputError(f"{name} must be a list with one list of {item}s per prompt ({example}), "
                     f"got {type(value).__name__}")
  one_video = lambda r: item == "video" and _is_array(r)  # a TxHxWx3 array: that row's video
  flat = [i for i, r in enumerate(value) if _is_single(r) and not one_video(r)]
  if flat:
    raise InputError(f"{name}[{flat[0]}] is a single {item}, not a list: {name} takes one list "
                     f"per prompt ({example}, not {name}=[{item}])")
  if len(value) != rows:
    raise InputError(f"{rows} prompts but {name} given for {len(value)} rows")
  out = []
  for i, r in enumerate(value):
    if r is not None and not isinstance(r, (list, tuple)) and not one_video(r):
      raise InputError(f"{name}[{i}] must be a list of {item}s (or None), got {type(r).__name__}")
    out.append([] if r is None else list(r) if isinstance(r, (list, tuple)) else [r])
  return out


def check_options(max_length, video_fps) -> None:
  """The numeric options of `prepare`."""
  if max_length is not None and (isinstance(max_length, (bool, np.bool_))
                                 or not isinstance(max_length, numbers.Integral) or max_length < 1):
    raise InputError(f"max_length must be a positive integer, got {max_length!r}")
  if (isinstance(video_fps, (bool, np.bool_)) or not isinstance(video_fps, numbers.Real)
      or not 0 < video_fps < math.inf):
    raise InputError(f"video_fps must be a positive finite number, got {video_fps!r}")


def video_frames(video, where: str) -> list:
  """One video of `prepare`: a list of frames (PIL images, paths, HxWx3 arrays) or a TxHxWx3
  uint8 array."""
  if _is_array(video):
    a = np.asarray(video)
    if a.ndim != 4:
      raise InputError(f"{where}: a video array must be TxHxWx3, got shape {a.shape}")
    return list(a)
  if not isinstance(video, (list, tuple)):
    raise InputError(f"{where} must be a list of frames (PIL images, paths or HxWx3 arrays) or a "
                     f"TxHxWx3 array, got {type(video).__name__}; for an animated file use "
                     f"vispec_jax.processing.load_frames(path)")
  if not video:
    raise InputError(f"{where} is a video with no frames")
  return list(video)


def load_frames(path) -> list[Image.Image]:
  """Every frame of one image file as RGB: an animated GIF/WebP/PNG or a multi-page TIFF is a
  video (a still image is a one-frame video). All frames together must fit the pixel limit of
  one image, checked before any frame after the first is decoded."""
  first = load_image(path)  # every check of a single image
  with Image.open(path) as img:
    n = getattr(img, "n_frames", 1)
    if n * img.width * img.height > MAX_IMAGE_PIXELS:
      raise InputError(f"video {path} is too large: {n} frames of {img.width}x{img.height} "
                       f"pixels (limit {MAX_IMAGE_PIXELS} in all); cut or downscale it first")
    frames = [first]
    for i in range(1, n):
      try:
        img.seek(i)
        frames.append(load_image(img.copy()))
      except (OSError, EOFError, SyntaxError, ValueError) as e:
        raise InputError(f"cannot read frame {i} of {path}: {e}") from None
  return frames


def _check_size(width: int, height: int, name: str):
  if width == 0 or height == 0:
    raise InputError(f"{name} has zero size: {width}x{height}")
  if width * height > MAX_IMAGE_PIXELS:
    raise InputError(f"{name} is too large: {width}x{height} pixels (limit {MAX_IMAGE_PIXELS}); "
                     f"downscale it first")


def pad_batch(rows: Sequence[np.ndarray], pad_id: int, length: int):
  """Left-pads 1-D rows to `length`: (ids int32[B, length], mask bool[B, length])."""
  ids = np.full((len(rows), length), pad_id, np.int32)
  mask = np.zeros((len(rows), length), bool)
  for i, r in enumerate(rows):
    if len(r):
      ids[i, -len(r):] = r
      mask[i, -len(r):] = True
  return ids, mask
