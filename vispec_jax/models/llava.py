"""LLaVA-1.5 and LLaVA-NeXT: the shared decoder (1-D RoPE; Vicuna/LLaMA or Mistral), the CLIP
tower (`models/clip.py`), a two-layer projector, anyres tiling and packing.

LLaVA-1.5: one `image_size`^2 tile per image -> CLIP hidden state(s) `feature_layers`, CLS dropped
("default") or kept ("full") -> projector -> grid^2 (+1) LLM tokens. LLaVA-NeXT: the image is
resized into the best `image_grid_pinpoints` resolution and cut into nph x npw tiles, plus a base
tile of the whole image; its tokens are the base tile's, then the tiles' as one (nph*grid) x
(npw*grid) map cropped back to the image's aspect ratio, each row followed by `image_newline`.
Which feature row becomes which token depends only on the image size, so `anyres_index` computes
it on the host; the jitted part runs the tower on all tiles and gathers rows (shapes bucketed).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from vispec_jax import checkpoints, layers, processing
from vispec_jax.configs import (ClipVisionConfig, ConfigError, LlavaVisionConfig, TargetConfig,
                                TextConfig)
from vispec_jax.models import clip, decoder, hf_config
from vispec_jax.processing import VisionInput

Params = layers.Params
HF_TYPES = {"llava": "LlavaForConditionalGeneration",  # model_type -> architecture
            "llava_next": "LlavaNextForConditionalGeneration"}

PREPEND_BOS = True  # LLaMA tokenizers start a prompt with <s>; the LLaVA processors add it too

# ------------------------------------------------------------------------ config

# transformers' defaults for keys that hub configs leave out (llava-hf configs are sparse).
_LLAMA_DEFAULTS = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                       num_hidden_layers=32, num_attention_heads=32, rms_norm_eps=1e-6,
                       max_position_embeddings=2048, sliding_window=None, bos_token_id=1,
                       eos_token_id=2)
_TEXT_DEFAULTS = {"llama": _LLAMA_DEFAULTS,
                  "mistral": dict(_LLAMA_DEFAULTS, intermediate_size=14336, num_key_value_heads=8,
                                  max_position_embeddings=4096 * 32, sliding_window=4096)}
# CLIPVisionConfig defaults, and LlavaConfig's defaults when vision_config is absent altogether.
_CLIP_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                      num_attention_heads=12, image_size=224, patch_size=32, num_channels=3,
                      layer_norm_eps=1e-5, hidden_act="quick_gelu")
_LLAVA_CLIP_DEFAULTS = dict(_CLIP_DEFAULTS, hidden_size=1024, intermediate_size=4096,
                            num_hidden_layers=24, num_attention_heads=16, image_size=336,
                            patch_size=14)
_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]


def _text_config(raw: dict) -> tuple[TextConfig, dict]:
  t_raw = raw.get("text_config") or {}
  kind = t_raw.get("model_type", "llama")
  if kind not in _TEXT_DEFAULTS:
    raise ConfigError(f"text_config.model_type {kind!r} is not supported for LLaVA targets; "
                      f"supported: {sorted(_TEXT_DEFAULTS)}")
  t = {**_TEXT_DEFAULTS[kind], **t_raw}
  if t.get("attention_bias") or t.get("mlp_bias"):
    raise ConfigError("text_config attention_bias/mlp_bias are not supported")
  rope = t.get("rope_parameters") or t.get("rope_scaling") or {}
  rope_type = rope.get("rope_type", rope.get("type", "default"))
  if rope_type != "default":
    raise ConfigError(f"text_config rope_type {rope_type!r} is not supported (only unscaled RoPE)")
  max_pos = int(t["max_position_embeddings"])
  if t.get("sliding_window"):  # identical to full attention for sequences within the window
    max_pos = min(max_pos, int(t["sliding_window"]))
  text = hf_config.text_config(t, raw, "text_config", max_position_embeddings=max_pos,
                               rope_theta=float(rope.get("rope_theta", t.get("rope_theta", 1e4))))
  return text, t


def _clip_config(raw: dict) -> ClipVisionConfig:
  v_raw = raw.get("vision_config")
  if v_raw is not None and v_raw.get("model_type", "clip_vision_model") != "clip_vision_model":
    raise ConfigError(f"vision_config.model_type {v_raw.get('model_type')!r} is not supported; "
                      f"LLaVA targets need a CLIP tower (clip_vision_model)")
  v = {**(_CLIP_DEFAULTS if v_raw is not None else _LLAVA_CLIP_DEFAULTS), **(v_raw or {})}
  return ClipVisionConfig(
      num_layers=int(v["num_hidden_layers"]), hidden_size=int(v["hidden_size"]),
      intermediate_size=int(v["intermediate_size"]), num_heads=int(v["num_attention_heads"]),
      image_size=int(v["image_size"]), patch_size=int(v["patch_size"]),
      in_channels=int(v["num_channels"]), layer_norm_eps=float(v["layer_norm_eps"]),
      hidden_act=v["hidden_act"])


def config_from_hf(raw: dict) -> TargetConfig:
  """TargetConfig of a `llava` / `llava_next` config.json (transformers 4 or 5 layout)."""
  is_next = (raw.get("model_type") == "llava_next"
             or "LlavaNextForConditionalGeneration" in (raw.get("architectures") or []))
  text, t = _text_config(raw)
  vclip = _clip_config(raw)
  feature_layers = hf_config.as_tuple(raw.get("vision_feature_layer", -2))
  for i in feature_layers:
    try:
      clip.resolve_layer(i, vclip)
    except ValueError as e:
      raise ConfigError(f"vision_feature_layer: {e}") from None
  strategy = raw.get("vision_feature_select_strategy", "default")
  if strategy not in ("default", "full"):
    raise ConfigError(f"vision_feature_select_strategy {strategy!r}; expected 'default' or 'full'")
  pinpoints = None
  if is_next:
    if strategy != "default":  # transformers cannot pack tiles that keep their CLS token either
      raise ConfigError("LLaVA-NeXT needs vision_feature_select_strategy 'default'")
    pinpoints = raw.get("image_grid_pinpoints") or _PINPOINTS
    try:
      pinpoints = tuple((int(h), int(w)) for h, w in pinpoints)
    except (TypeError, ValueError):
      raise ConfigError(f"image_grid_pinpoints must be [height, width] pairs, got "
                        f"{pinpoints!r}") from None
    bad = [list(p) for p in pinpoints if p[0] <= 0 or p[1] <= 0
           or p[0] % vclip.image_size or p[1] % vclip.image_size]
    if bad:
      raise ConfigError(f"image_grid_pinpoints {bad} are not positive multiples of the vision "
                        f"image_size {vclip.image_size}; anyres tiling cannot use them")
  vision = LlavaVisionConfig(
      clip=vclip, out_hidden_size=text.hidden_size, feature_layers=feature_layers,
      select_strategy=strategy, projector_act=raw.get("projector_hidden_act", "gelu"),
      projector_bias=bool(raw.get("multimodal_projector_bias", True)), grid_pinpoints=pinpoints)
  return TargetConfig(
      family="llava_next" if is_next else "llava", text=text, vision=vision,
      image_token_id=int(raw.get("image_token_id", raw.get("image_token_index", 32000))),
      **hf_config.special_tokens(raw.get("eos_token_id", t.get("eos_token_id")),
                                 raw.get("pad_token_id", t.get("pad_token_id"))))


# ------------------------------------------------------------- anyres layout (host)


def select_best_resolution(size_hw: tuple[int, int], pinpoints) -> tuple[int, int]:
  """The pinpoint (height, width) that keeps most of the image's pixels, then wastes least
  (transformers' `select_best_resolution`)."""
  h, w = size_hw
  def score(p):  # (effective pixels, -wasted pixels); max() keeps the first of equals
    scale = min(p[1] / w, p[0] / h)
    eff = min(int(w * scale) * int(h * scale), w * h)
    return eff, eff - p[0] * p[1]
  return tuple(max(pinpoints, key=score))


def tile_grid(size_hw: tuple[int, int], cfg: LlavaVisionConfig) -> tuple[int, int]:
  """(rows, cols) of image_size tiles for an image (transformers' get_anyres_image_grid_shape)."""
  bh, bw = select_best_resolution(size_hw, cfg.grid_pinpoints)
  return bh // cfg.clip.image_size, bw // cfg.clip.image_size


def tokens_per_tile(cfg: LlavaVisionConfig) -> int:
  return cfg.clip.grid ** 2 + (cfg.select_strategy == "full")


def anyres_index(size_hw: tuple[int, int], cfg: LlavaVisionConfig) -> np.ndarray:
  """For each LLM token of one image, its row in the image's projected tile features
  (flattened [tiles, tokens_per_tile]), or -1 for `image_newline`.

  Tiles are [base, tile (0,0), (0,1), ..., (nph-1, npw-1)]. Mirrors transformers'
  `pack_image_features` + `unpad_image`, including their float rounding.
  """
  g, tok = cfg.clip.grid, tokens_per_tile(cfg)
  if cfg.grid_pinpoints is None:
    return np.arange(tok, dtype=np.int32)
  nph, npw = tile_grid(size_hw, cfg)
  rows, cols = np.arange(nph * g), np.arange(npw * g)
  oh, ow = size_hw
  ch, cw = len(rows), len(cols)
  if ow / oh > cw / ch:  # image wider than the tile map: padding rows top and bottom
    pad = (ch - int(round(oh * (cw / ow), 7))) // 2
    rows = rows[pad:ch - pad]
  else:
    pad = (cw - int(round(ow * (ch / oh), 7))) // 2
    cols = cols[pad:cw - pad]
  tile = 1 + (rows[:, None] // g) * npw + cols[None, :] // g
  index = tile * tok + (rows[:, None] % g) * g + cols[None, :] % g
  index = np.concatenate([index, np.full((len(rows), 1), -1)], axis=1)  # newline after each row
  return np.concatenate([np.arange(g * g), index.reshape(-1)]).astype(np.int32)


@dataclasses.dataclass(frozen=True)
class ImageLayout:
  """Host-side layout of one image: `index` from `anyres_index`, and the image's (height, width)."""
  index: np.ndarray
  image_size: tuple[int, int]


def num_image_tokens(size_hw: tuple[int, int], cfg: LlavaVisionConfig) -> int:
  return len(anyres_index(size_hw, cfg))


# ------------------------------------------------------------------- vision encode


def project(params: Params, cfg: LlavaVisionConfig, pixels: jax.Array) -> jax.Array:
  """Tiles [N, C, S, S] -> projected features [N, tokens_per_tile, E_text]."""
  picked = [clip.resolve_layer(i, cfg.clip) for i in cfg.feature_layers]
  hs = clip.hidden_states(params["tower"], cfg.clip, pixels, num_layers=max(picked))
  x = jnp.concatenate([hs[i] for i in picked], axis=-1)
  if cfg.select_strategy == "default":
    x = x[:, 1:]  # drop CLS
  p = params["projector"]
  return layers.linear(layers.activation(cfg.projector_act)(layers.linear(x, p["linear_1"])),
                       p["linear_2"])


@functools.partial(jax.jit, static_argnames=("cfg",))
def _encode(params, cfg, pixels, index):
  """Tiles [N, C, S, S] -> the LLM tokens `index` picks from their flattened features (-1:
  image_newline)."""
  feats = project(params, cfg, pixels)
  flat = feats.reshape(-1, feats.shape[-1])
  newline = params.get("image_newline", jnp.zeros((flat.shape[-1],)))
  flat = jnp.concatenate([flat, newline.astype(flat.dtype)[None]])
  return jnp.take(flat, jnp.where(index < 0, flat.shape[0] - 1, index), axis=0)


def tower_input(item: VisionInput) -> np.ndarray:
  """One image's tiles [n_tiles, C, S, S] as the tower takes them."""
  return np.asarray(item.patches, np.float32)


def encode_item(params: Params, cfg: LlavaVisionConfig, pixels: jax.Array,
                layout: ImageLayout) -> jax.Array:
  """LLM tokens [n_tokens, E_text] of one image from its `tower_input` (traceable: training
  vmaps it over images that share one layout)."""
  return _encode(params, cfg, pixels, jnp.asarray(layout.index, jnp.int32))


def encode_vision(params: Params, cfg: LlavaVisionConfig, items) -> list[jax.Array]:
  """LLM tokens [num_tokens, E_text] of each image. All tiles of all images run through the tower
  in one call; one compiled program per (tile bucket, token bucket)."""
  if not items:
    return []
  first = np.cumsum([0] + [len(it.patches) for it in items])  # each image's first tile
  index = np.concatenate([np.where(it.layout.index >= 0, it.layout.index + a * tokens_per_tile(cfg),
                                   -1) for it, a in zip(items, first)])
  s, n_tiles = cfg.clip.image_size, int(first[-1])
  pixels = np.zeros((processing.bucket(n_tiles), cfg.clip.in_channels, s, s), np.float32)
  pixels[:n_tiles] = np.concatenate([it.patches for it in items])
  padded = np.zeros(processing.bucket_length(len(index), minimum=64), np.int32)
  padded[:len(index)] = index
  dtype = params["tower"]["patch_embed"]["kernel"].dtype
  out = _encode(params, cfg, jnp.asarray(pixels, dtype), jnp.asarray(padded))
  ends = np.cumsum([it.num_tokens for it in items])
  return [out[b - it.num_tokens:b] for it, b in zip(items, ends)]


# ------------------------------------------------------------- params and checkpoints


def param_shapes(cfg: TargetConfig, dtype=jnp.float32) -> Params:
  v = cfg.vision
  lin = layers.linear_shapes
  e_in, e = v.clip.hidden_size * len(v.feature_layers), v.out_hidden_size
  vision = {"tower": clip.param_shapes(v.clip, dtype),
            "projector": {"linear_1": lin(e_in, e, v.projector_bias, dtype),
                          "linear_2": lin(e, e, v.projector_bias, dtype)}}
  if v.grid_pinpoints is not None:
    vision["image_newline"] = jax.ShapeDtypeStruct((e,), dtype)
  return {"text": decoder.param_shapes(cfg.text, dtype), "vision": vision}


# Canonical names are what transformers 5 `save_pretrained` writes; its in-memory module names and
# hub checkpoints of older versions (`vision_tower.vision_model.*`) fold onto them.
HF_PREFIX_RULES = [
    ("model.language_model.", "language_model.model."),
    ("lm_head.", "language_model.lm_head."),
    ("model.vision_tower.vision_model.", "vision_tower."),
    ("model.vision_tower.", "vision_tower."),
    ("vision_tower.vision_model.", "vision_tower."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
    ("model.image_newline", "image_newline"),
]


def name_map(cfg: TargetConfig):
  v = cfg.vision
  nm = checkpoints.NameMap(HF_PREFIX_RULES)
  decoder.add_hf_names(nm, cfg.text, prefix="language_model.model.",
                       lm_head="language_model.lm_head.weight")
  clip.add_hf_names(nm, v.clip, ("vision", "tower"), "vision_tower.")
  for n in ("linear_1", "linear_2"):
    decoder.add_linear(nm, f"multi_modal_projector.{n}", ("vision", "projector", n),
                       v.projector_bias)
  if v.grid_pinpoints is not None:
    nm.add("image_newline", ("vision", "image_newline"))
  return nm


# ------------------------------------------------------------------ preprocessing

# the checked preprocessor_config.json keys, but Qwen's min/max_pixels
_PROCESSOR_KEYS = [k for k in hf_config.PREPROCESSOR_KINDS if not k.endswith("_pixels")]


def make_image_processor(folder: str | None, cfg: TargetConfig):
  """transformers' PIL image processor (no torchvision) with the folder's settings, if any. The
  anyres pinpoints always come from the model config (the packing uses them)."""
  from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil
  from transformers.models.llava_next.image_processing_pil_llava_next import (
      LlavaNextImageProcessorPil)
  s = cfg.vision.clip.image_size
  kwargs = {"size": {"shortest_edge": s}, "crop_size": {"height": s, "width": s}}
  raw = checkpoints.preprocessor_config(folder)
  kwargs.update({k: raw[k] for k in _PROCESSOR_KEYS if k in raw})
  if cfg.vision.grid_pinpoints is None:
    return LlavaImageProcessorPil(**kwargs)
  kwargs.pop("do_pad", None)  # NeXT's do_pad pads the tile count of a batch, not the image
  return LlavaNextImageProcessorPil(
      image_grid_pinpoints=[list(p) for p in cfg.vision.grid_pinpoints], **kwargs)


def preprocess_image(processor, cfg: TargetConfig, image):
  v, s = cfg.vision, cfg.vision.clip.image_size
  out = processor(images=[image], return_tensors="np")
  pixels = np.asarray(out["pixel_values"], np.float32)
  size, grid = (image.height, image.width), (1, 1, 1)
  if v.grid_pinpoints is not None:
    size = tuple(int(x) for x in out["image_sizes"][0])
    grid = (1, *tile_grid(size, v))
    pixels = pixels[0, :1 + grid[1] * grid[2]]
  index = anyres_index(size, v)
  if pixels.shape[-2:] != (s, s):
    raise ConfigError(f"the image processor makes {pixels.shape[-2]}x{pixels.shape[-1]} tiles but "
                      f"the vision tower takes {s}x{s} (check preprocessor_config.json crop_size)")
  return VisionInput("image", pixels, len(index), grid, layout=ImageLayout(index, size))


def vision_placeholder(cfg: TargetConfig, kind: str) -> tuple[str, int | None]:
  """(text inserted for one image when there is no chat template, token id to expand)."""
  if kind == "image":
    return "<image>", cfg.image_token_id
  return "", None  # no videos


def positions(tokens: np.ndarray, cfg: TargetConfig, items) -> tuple[np.ndarray, int]:
  """1-D positions: image tokens count like text tokens."""
  del cfg, items
  return np.arange(len(tokens), dtype=np.int32), len(tokens)
