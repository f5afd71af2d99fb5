"""The target VLM: loading a checkpoint folder, preparing prompts, the forward pass. `Target`
bundles a config, params, the tokenizer and image processor; its compute methods are pure
functions of (params, arrays), with vision, positions and shapes from the family module.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vispec_jax import checkpoints, layers, models, processing, sharding
from vispec_jax.configs import TargetConfig
from vispec_jax.models import decoder, hf_config
from vispec_jax.processing import Batch, InputError

@dataclasses.dataclass(frozen=True, eq=False)
class Target:
  """A loaded target model. `params` is a pytree: {"text": ..., "vision": ...}."""
  config: TargetConfig
  params: Any
  tokenizer: Any = None
  image_processor: Any = None
  folder: str | None = None

  @property
  def family(self):
    return models.family(self.config)

  def embed(self, params, batch: Batch) -> jax.Array:
    """Input embeddings [B, P, E]: token embeddings with vision tokens scattered in."""
    text = params["text"]
    feats = self.family.encode_vision(params["vision"], self.config.vision, batch.vision)
    n, dtype = sum(int(f.shape[0]) for f in feats), text["embed"].dtype
    n_pad = processing.bucket_length(max(n, 1), minimum=64)
    pad = jnp.zeros((n_pad - n, self.config.text.hidden_size), dtype)
    vis = jnp.concatenate([f.astype(dtype) for f in feats] + [pad])
    return _merge_embeddings(text["embed"], jnp.asarray(batch.input_ids), vis,
                             jnp.asarray(batch.vision_index))

  def forward(self, params, batch: Batch) -> tuple[jax.Array, jax.Array]:
    """Full-sequence (logits fp32 [B, P, V], final hidden [B, P, E]), no cache (for parity)."""
    return _forward(params["text"], self.config.text, self.embed(params, batch),
                    jnp.asarray(batch.positions), jnp.asarray(batch.attention_mask))


@jax.jit
def _merge_embeddings(table, ids, vision, index):
  tok = jnp.take(table, ids, axis=0)
  vis = jnp.take(vision, jnp.maximum(index, 0), axis=0)
  return jnp.where((index >= 0)[..., None], vis, tok)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _forward(params, cfg, embeds, positions, attention_mask):
  t = embeds.shape[1]
  causal = jnp.tril(jnp.ones((t, t), bool))
  mask = causal[None] & attention_mask[:, None, :]
  hidden, _ = decoder.forward(params, cfg, embeds, positions, mask)
  return decoder.logits(params, hidden), hidden


# ------------------------------------------------------------------------- loading


def init_target(cfg: TargetConfig, key: jax.Array, dtype=jnp.float32, tokenizer=None,
                image_processor=None) -> Target:
  """A randomly initialised target (tests, training from scratch)."""
  fam = models.family(cfg)
  params = layers.init_params(fam.param_shapes(cfg, dtype), key)
  if image_processor is None and cfg.vision is not None:
    image_processor = fam.make_image_processor(None, cfg)
  return Target(cfg, params, tokenizer, image_processor)


def load_target(folder: str, dtype=jnp.float32, mesh=None) -> Target:
  """Loads a Hugging Face checkpoint folder: config.json, then safetensors (or, when there are
  none, pytorch_model.bin parsed without torch or pickle code), single or sharded, cast to `dtype`
  one tensor at a time; with a `mesh` (`vispec_jax.sharding`) straight into their sharded layout.
  Raises `CheckpointError` (folder, file, tensor) or `ConfigError` (file, key): ValueErrors.
  """
  cfg = models.config_from_hf(checkpoints.read_config(folder), os.path.join(folder, "config.json"))
  fam = models.family(cfg)
  files = checkpoints.weight_files(folder)
  shapes = fam.param_shapes(cfg, dtype)
  shardings = None
  if mesh is not None:
    head_dims = {"text": cfg.text.head_dim, "vision": getattr(cfg.vision, "head_dim", 1)}
    shardings = sharding.param_shardings(shapes, mesh, head_dims)
  params = checkpoints.load_params(files, fam.name_map(cfg), shapes, dtype, shardings)
  tokenizer = _load_tokenizer(folder)
  preprocessor = os.path.join(folder, "preprocessor_config.json")
  hf_config.check_preprocessor(checkpoints.preprocessor_config(folder), preprocessor)
  try:
    processor = fam.make_image_processor(folder, cfg)
  except (ValueError, TypeError, KeyError, AttributeError) as e:  # a bad preprocessor_config.json
    raise checkpoints.CheckpointError(f"{preprocessor}: cannot build the image processor "
                                      f"({type(e).__name__}: {e})") from None
  return Target(cfg, params, tokenizer, processor, folder)


def _load_tokenizer(folder: str):
  """The folder's tokenizer (None for a weights-only folder), its chat template compiled here so
  that a broken one is a CheckpointError naming its file at load time, not at the first prompt."""
  names = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
  if not any(os.path.isfile(os.path.join(folder, n)) for n in names):
    return None  # weights-only folder: prompts must then be token ids
  from transformers import AutoTokenizer
  try:
    tok = AutoTokenizer.from_pretrained(folder)
  except ImportError:
    raise
  except Exception as e:  # tokenizers raises bare Exceptions for a corrupt tokenizer.json
    raise checkpoints.CheckpointError(
        f"{folder}: cannot load the tokenizer ({type(e).__name__}: {e})") from None
  source = next((os.path.join(folder, n) for n in ("chat_template.jinja", "tokenizer_config.json")
                 if os.path.isfile(os.path.join(folder, n))), folder)
  legacy = os.path.join(folder, "chat_template.json")  # processor-level template of older saves
  if getattr(tok, "chat_template", None) is None and os.path.isfile(legacy):
    template = checkpoints.read_json(legacy, 'a JSON object with a "chat_template"').get(
        "chat_template")
    if template is not None and not isinstance(template, str):
      raise checkpoints.CheckpointError(f'{legacy}: "chat_template" must be a string, got '
                                        f"{type(template).__name__}")
    tok.chat_template, source = template, legacy
  _check_chat_template(tok.chat_template, source)
  return tok


def _check_chat_template(template, source: str) -> None:
  """Compiles a chat template (a string, or {name: string}) as transformers will render it."""
  if template is None:
    return
  templates = template if isinstance(template, dict) else {"default": template}
  import jinja2
  from jinja2.sandbox import ImmutableSandboxedEnvironment
  from transformers.utils import chat_template_utils
  # transformers' own compiler (its extensions, filters and globals) when it has one; else its
  # environment, minus its extras
  compile_ = getattr(chat_template_utils, "_compile_jinja_template", None) or (
      ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                    extensions=["jinja2.ext.loopcontrols"]).from_string)
  for name, text in templates.items():
    where = source if len(templates) == 1 else f"{source} (template {name!r})"
    if not isinstance(text, str):
      raise checkpoints.CheckpointError(f"{where}: the chat template must be a string, got "
                                        f"{type(text).__name__}")
    try:
      compile_(text)
    except jinja2.TemplateError as e:
      why = f"line {e.lineno}: {e.message}" if isinstance(e, jinja2.TemplateSyntaxError) else e
      raise checkpoints.CheckpointError(
          f"{where}: the chat template is not valid Jinja ({why})") from None


# ------------------------------------------------------------------------ prompting


def _render(target: Target, prompt: str, kinds: list[str], chat: bool) -> str:
  """Prompt text with one placeholder per image/video, through the chat template if any."""
  fam, tok = target.family, target.tokenizer
  parts = prompt.split(processing.IMAGE_MARKER)
  if len(parts) > 1 and len(parts) - 1 != len(kinds):
    raise InputError(f"prompt has {len(parts) - 1} {processing.IMAGE_MARKER} markers but "
                     f"{len(kinds)} images/videos were given")
  if len(parts) == 1:
    parts = [""] * len(kinds) + [prompt]
  if chat and getattr(tok, "chat_template", None):
    content = []
    for i, kind in enumerate(kinds):
      if parts[i]:
        content.append({"type": "text", "text": parts[i]})
      content.append({"type": kind})
    if parts[-1]:
      content.append({"type": "text", "text": parts[-1]})
    return tok.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                   add_generation_prompt=True)
  return "".join(part + fam.vision_placeholder(target.config, kind)[0]
                 for part, kind in zip(parts, kinds)) + parts[-1]


def prepare(target: Target, prompts: Sequence[str], images=None, videos=None, *,
            video_fps: float = 2.0, chat: bool = True, max_length: int | None = None) -> Batch:
  """Tokenizes prompts with their images/videos into a left-padded, bucketed `Batch`.

  Args:
    prompts: B strings. A prompt may place its images with `<image>` markers (one per image,
      videos after images); otherwise images and videos come before the text.
    images: per row, a list of images (or None): PIL images, paths or HxWx3 uint8 arrays.
      One list per prompt: images=[[img]] for one prompt with one image.
    videos: per row, a list of videos, each a list of frames (as images) or a TxHxWx3 array.
    max_length: refuse prompts longer than this many tokens (e.g. the cache size).
  Raises InputError naming the argument (and row) that is wrong.
  """
  if isinstance(prompts, str):
    prompts = [prompts]
  if not isinstance(prompts, Sequence) or isinstance(prompts, bytes):
    raise InputError(f"prompts must be a list of strings, got {type(prompts).__name__}")
  b = len(prompts)
  if b == 0:
    raise InputError("no prompts given")
  for i, prompt in enumerate(prompts):
    if not isinstance(prompt, str):
      raise InputError(f"prompts[{i}] must be a string, got {type(prompt).__name__}")
    if not prompt.strip():
      raise InputError(f"empty prompt (prompts[{i}])")
  processing.check_options(max_length, video_fps)
  images = processing.per_row(images, b, "images", "image")
  videos = processing.per_row(videos, b, "videos", "video")
  if target.tokenizer is None:
    raise InputError("this checkpoint folder has no tokenizer; cannot prepare text prompts")
  cfg, fam = target.config, target.family
  rows, row_items = [], []
  for row, (prompt, imgs, vids) in enumerate(zip(prompts, images, videos)):
    if (imgs or vids) and cfg.vision is None:
      raise InputError("this model has no vision tower but images were given")
    if vids and not hasattr(fam, "preprocess_video"):
      raise InputError("this model does not take videos")
    its = [fam.preprocess_image(target.image_processor, cfg, processing.load_image(im))
           for im in imgs]
    for j, video in enumerate(vids):
      frames = processing.video_frames(video, f"videos[{row}][{j}]")
      its.append(fam.preprocess_video(target.image_processor, cfg,
                                      [processing.load_image(f) for f in frames], fps=video_fps))
    text = _render(target, prompt, [it.kind for it in its], chat)
    ids = np.asarray(target.tokenizer(text, add_special_tokens=False)["input_ids"], np.int64)
    bos = getattr(target.tokenizer, "bos_token_id", None)
    if getattr(fam, "PREPEND_BOS", False) and bos is not None and (not len(ids) or ids[0] != bos):
      ids = np.concatenate([[bos], ids]).astype(np.int64)
    rows.append(_expand_placeholders(ids, its, cfg, fam))
    row_items.append(its)
  longest = max(len(r) for r in rows)
  if max_length is not None and longest > max_length:
    raise InputError(f"prompt is {longest} tokens, longer than the limit of {max_length}")
  return batch_from_rows(target, rows, row_items)


def batch_from_rows(target: Target, rows: Sequence[np.ndarray], row_items: Sequence[list]) -> Batch:
  """A left-padded, bucketed `Batch` of token rows that already hold their expanded vision
  tokens, with each row's images/videos (`VisionInput`s): the tail of `prepare`, also for
  sequences that are not prompts (datagen's prompt + answer)."""
  cfg, fam, b = target.config, target.family, len(rows)
  length = processing.bucket_length(max(len(r) for r in rows))
  input_ids, mask = processing.pad_batch(rows, cfg.pad_token_id, length)
  # each vision token's index into all rows' vision tokens, in order (-1: text or padding)
  is_vis = mask & np.isin(input_ids, cfg.vision_token_ids)
  vision_index = np.where(is_vis, np.cumsum(is_vis).reshape(b, length) - 1, -1).astype(np.int32)
  pos_rows, next_pos = zip(*(fam.positions(ids, cfg, its) for ids, its in zip(rows, row_items)))
  positions = np.zeros(pos_rows[0].shape[:-1] + (b, length), np.int32)  # [3, B, P] for mRoPE
  for i, pos in enumerate(pos_rows):
    positions[..., i, length - pos.shape[-1]:] = pos
  return Batch(input_ids, mask, positions, np.asarray(next_pos, np.int32),
               [it for its in row_items for it in its], vision_index,
               np.asarray([len(r) for r in rows], np.int32))


def _expand_placeholders(ids: np.ndarray, items, cfg: TargetConfig, fam) -> np.ndarray:
  """Replaces the k-th image/video placeholder token by that item's number of vision tokens."""
  out, queue = [], {k: [it for it in items if it.kind == k] for k in ("image", "video")}
  token_kind = {fam.vision_placeholder(cfg, k)[1]: k for k in ("image", "video")}
  for t in ids.tolist():
    kind = token_kind.get(t)
    if kind is None:
      out.append(t)
      continue
    if not queue[kind]:
      raise InputError(f"prompt has more {kind} placeholders than {kind}s given; mark where "
                       f"{kind}s go with {processing.IMAGE_MARKER}, not the model's {kind} token")
    it = queue[kind].pop(0)
    out.extend([t] * it.num_tokens)
  left = [k for k, q in queue.items() if q]
  if left:
    raise InputError(f"more {left[0]}s given than {left[0]} placeholders in the prompt")
  return np.asarray(out, np.int32)
