"""Qwen2.5-VL: vision transformer, patch merger and 3-D (mRoPE) position ids; the language model
is the shared decoder (`models/decoder.py`) with mRoPE positions.

Vision tower per image/video (grid t x h x w patches): patch embed (a Conv3d as one matmul) ->
`depth` pre-norm blocks of 2-D rotary attention, windowed except at `fullatt_block_indexes` (full
attention within each frame) -> RMSNorm + 2x2 patch merger MLP. The windows depend only on the
grid, so they are laid out on the host (`vision_layout`): patches enter in window order, attention
boundaries are segment ids, and a gather restores the token order; jitted shapes are bucketed.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from vispec_jax import checkpoints, layers, processing
from vispec_jax.configs import ConfigError, QwenVisionConfig, TargetConfig
from vispec_jax.models import decoder, hf_config
from vispec_jax.processing import VisionInput

Params = layers.Params
HF_TYPES = {"qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration"}  # model_type -> architecture

# ------------------------------------------------------------------------ config


def config_from_hf(raw: dict) -> TargetConfig:
  """TargetConfig of a `qwen2_5_vl` config.json (transformers 4 or 5 layout)."""
  # transformers 5 nests the LM under text_config; older checkpoints keep it flat at top level.
  t = {**raw, **(raw.get("text_config") or {})}
  where = "text_config" if "text_config" in raw else "config"
  rope = t.get("rope_parameters") or {}
  rope_scaling = t.get("rope_scaling") or {}
  theta = rope.get("rope_theta", t.get("rope_theta", 1e6))
  section = rope.get("mrope_section") or rope_scaling.get("mrope_section") or [16, 24, 24]
  for r in (rope, rope_scaling):  # scaled RoPE (yarn, linear, dynamic...) would load but be wrong
    rope_type = r.get("rope_type", r.get("type", "default"))
    if rope_type not in ("default", "mrope"):
      raise ConfigError(f"rope type {rope_type!r} is not supported (plain mRoPE only)")
  text = hf_config.text_config(t, raw, where, rope_theta=float(theta), qkv_bias=True,
                              mrope_section=tuple(int(s) for s in section))
  hidden = text.hidden_size
  if 2 * sum(section) != text.head_dim:
    raise ConfigError(f"mrope_section {section} must sum to head_dim/2 = {text.head_dim // 2}")
  v = hf_config.require(raw, "vision_config", "config")
  need = lambda key: int(hf_config.require(v, key, "vision_config"))
  vision = QwenVisionConfig(
      depth=need("depth"), hidden_size=need("hidden_size"),
      intermediate_size=need("intermediate_size"), num_heads=need("num_heads"),
      out_hidden_size=int(v.get("out_hidden_size", hidden)),
      fullatt_block_indexes=hf_config.as_tuple(v.get("fullatt_block_indexes", (7, 15, 23, 31))),
      in_channels=int(v.get("in_channels", v.get("in_chans", 3))),
      tokens_per_second=float(v.get("tokens_per_second", 2)),
      rope_theta=float((v.get("rope_parameters") or {}).get("rope_theta", 10000.0)),
      **{k: v[k] for k in ("patch_size", "temporal_patch_size", "spatial_merge_size",
                           "window_size", "hidden_act") if k in v})  # checked, else defaults
  if vision.out_hidden_size != hidden:
    raise ConfigError(f"vision out_hidden_size {vision.out_hidden_size} != "
                      f"text hidden_size {hidden}")
  return TargetConfig(
      family="qwen2_5_vl",
      text=text,
      vision=vision,
      image_token_id=int(raw.get("image_token_id", 151655)),
      video_token_id=int(raw.get("video_token_id", 151656)),
      vision_start_token_id=int(raw.get("vision_start_token_id", 151652)),
      vision_end_token_id=int(raw.get("vision_end_token_id", 151653)),
      **hf_config.special_tokens(raw.get("eos_token_id", t.get("eos_token_id")),
                                 raw.get("pad_token_id")))


# ------------------------------------------------------------------- vision tower



@dataclasses.dataclass(frozen=True)
class VisionLayout:
  """Host-side layout of one image/video, padded to `padded_patches` (multiple of merge unit)."""
  order: np.ndarray        # int[n_patches]: patch index (processor order) at each window slot
  rot_pos: np.ndarray      # int[padded, 2]: (h, w) rotary position of each window slot
  full_seg: np.ndarray     # int[padded]: frame id (full-attention boundary), -1 for padding
  window_seg: np.ndarray   # int[padded]: window id, -1 for padding
  unmerge: np.ndarray      # int[n_tokens]: merged row (window order) of each LLM token
  n_patches: int
  padded_patches: int


def vision_layout(grid_thw: tuple[int, int, int], cfg: QwenVisionConfig) -> VisionLayout:
  """Window order, rotary positions and attention segments for one grid (transformers'
  get_vision_position_ids / get_vision_window_index / cu_seqlens, as arrays)."""
  t, h, w = (int(v) for v in grid_thw)
  m = cfg.spatial_merge_size
  if h % m or w % m:
    raise ValueError(f"grid {grid_thw} not divisible by spatial_merge_size {m}")
  unit, lh, lw = m * m, h // m, w // m
  # Rotary (h, w) positions in processor order: merge blocks are contiguous runs of m*m patches.
  hw = np.stack(np.meshgrid(np.arange(h), np.arange(w), indexing="ij"), -1)
  rot = np.tile(hw.reshape(lh, m, lw, m, 2).transpose(0, 2, 1, 3, 4).reshape(-1, 2), (t, 1))
  # Windows of win x win merged tokens per frame, -1 where a window passes the grid's edge.
  win = cfg.window_size // m // cfg.patch_size
  ph, pw = -lh % win, -lw % win
  index = np.pad(np.arange(t * lh * lw).reshape(t, lh, lw), ((0, 0), (0, ph), (0, pw)),
                 constant_values=-1)
  windows = index.reshape(t, (lh + ph) // win, win, (lw + pw) // win, win)
  windows = windows.transpose(0, 1, 3, 2, 4).reshape(-1, win * win)
  window_index, window_id = windows[windows >= 0], np.nonzero(windows >= 0)[0]
  n = t * lh * lw * unit
  order = (window_index[:, None] * unit + np.arange(unit)).reshape(-1)
  frame = np.repeat(np.arange(t), h * w)
  pad_to = processing.bucket(n, 64 * unit)
  pad = lambda a, value: np.concatenate([a, np.full((pad_to - n,) + a.shape[1:], value, a.dtype)])
  return VisionLayout(
      order=order, rot_pos=pad(rot[order].astype(np.int32), 0),
      full_seg=pad(frame[order].astype(np.int32), -1),
      window_seg=pad(np.repeat(window_id, unit).astype(np.int32), -1),
      unmerge=np.argsort(window_index).astype(np.int32), n_patches=n, padded_patches=pad_to)


@functools.partial(jax.jit, static_argnames=("cfg",))
def vision_forward(params: Params, cfg: QwenVisionConfig, patches: jax.Array, rot_pos: jax.Array,
                   full_seg: jax.Array, window_seg: jax.Array, unmerge: jax.Array) -> jax.Array:
  """The tower on one padded, window-ordered sequence of patches [N, patch_dim] (N a multiple of
  the merge unit) with rot_pos int[N, 2] and attention segment ids full_seg, window_seg int[N]:
  LLM tokens [n_tokens, out_hidden] in prompt order (`unmerge`: each one's merged row)."""
  x = layers.linear(patches, params["patch_embed"])
  # 2-D rotary: the first half of the rotary frequencies follow h, the second half w.
  inv = layers.rope_inv_freq(cfg.head_dim // 2, cfg.rope_theta)
  freqs = (rot_pos.astype(jnp.float32)[..., None] * inv).reshape(rot_pos.shape[0], -1)
  emb = jnp.concatenate([freqs, freqs], -1)[None]  # [1, N, D]
  cos, sin = jnp.cos(emb), jnp.sin(emb)
  full_mask = (full_seg[:, None] == full_seg[None, :])[None]
  window_mask = (window_seg[:, None] == window_seg[None, :])[None]
  x = x[None]
  for i, bp in enumerate(params["blocks"]):
    mask = full_mask if i in cfg.fullatt_block_indexes else window_mask
    a, _ = layers.self_attention(
        layers.rms_norm(x, bp["norm1"], 1e-6), bp["attn"], num_heads=cfg.num_heads,
        num_kv_heads=cfg.num_heads, head_dim=cfg.head_dim, cos=cos, sin=sin, mask=mask)
    x = x + a
    x = x + layers.gated_mlp(layers.rms_norm(x, bp["norm2"], 1e-6), bp["mlp"], cfg.hidden_act)
  mp = params["merger"]
  x = layers.rms_norm(x[0], mp["ln_q"], 1e-6).reshape(-1, cfg.hidden_size * cfg.merge_unit)
  return layers.linear(layers.activation("gelu")(layers.linear(x, mp["fc1"])), mp["fc2"])[unmerge]


def tower_input(item: VisionInput) -> np.ndarray:
  """One item's patches in window order, padded to its patch bucket: [padded, patch_dim]."""
  lay = item.layout
  out = np.zeros((lay.padded_patches, item.patches.shape[-1]), np.float32)
  out[:lay.n_patches] = item.patches[lay.order]
  return out


def encode_item(params: Params, cfg: QwenVisionConfig, pixels: jax.Array,
                layout: VisionLayout) -> jax.Array:
  """LLM tokens [n_tokens, out_hidden] of one item from its `tower_input` (traceable: training
  vmaps it over images that share one layout)."""
  return vision_forward(params, cfg, pixels, layout.rot_pos, layout.full_seg, layout.window_seg,
                        layout.unmerge)


def encode_vision(params: Params, cfg: QwenVisionConfig, items) -> list[jax.Array]:
  """LLM tokens [n_tokens, out_hidden] of each `VisionInput` (image or video), one at a time so
  the dense attention never spans two images; one program per (patch bucket, token count)."""
  dtype = params["patch_embed"]["kernel"].dtype
  return [encode_item(params, cfg, jnp.asarray(tower_input(it), dtype), it.layout)
          for it in items]


# --------------------------------------------------------------------- 3-D positions


def positions(tokens: np.ndarray, cfg: TargetConfig, items) -> tuple[np.ndarray, int]:
  """mRoPE position ids of one unpadded prompt (transformers' `get_rope_index`).

  Text runs advance all three rows by one per token; an image/video run of grid (t, h, w) gets
  (start + t_index * time_interval, start + h_index, start + w_index) over the merged grid and
  advances the start by max(h, w) / merge. Returns (positions int[3, L], next position).
  """
  m = cfg.vision.spatial_merge_size
  kinds = np.zeros(len(tokens), np.int32)
  kinds[tokens == cfg.image_token_id] = 1
  if cfg.video_token_id is not None:
    kinds[tokens == cfg.video_token_id] = 2
  names = {1: "image", 2: "video"}
  queue = {k: iter([it for it in items if it.kind == name]) for k, name in names.items()}
  chunks, start, offset = [], 0, 0
  for kind, group in itertools.groupby(kinds):
    n = len(list(group))
    if kind == 0:
      chunks.append(np.broadcast_to(np.arange(n) + start, (3, n)))
      start += n
    else:
      name, item = names[kind], next(queue[kind], None)
      if item is None:
        raise ValueError(f"prompt has more {name} token runs than {name}s")
      t, h, w = (int(g) for g in item.grid_thw)
      if t * (h // m) * (w // m) != n:
        raise ValueError(f"{name} run of {n} tokens at offset {offset} does not match its grid "
                         f"{tuple(item.grid_thw)} ({t * (h // m) * (w // m)} tokens)")
      interval = cfg.vision.tokens_per_second * item.seconds_per_grid if kind == 2 else 1
      tt, hh, ww = np.meshgrid((np.arange(t) * interval).astype(np.int64),
                               np.arange(h // m) + start, np.arange(w // m) + start, indexing="ij")
      chunks.append(np.stack([tt.reshape(-1) + start, hh.reshape(-1), ww.reshape(-1)]))
      start += max(h, w) // m
    offset += n
  for kind, rest in queue.items():
    if next(rest, None) is not None:
      raise ValueError(f"more {names[kind]}s than {names[kind]} token runs in the prompt")
  pos = np.concatenate(chunks, axis=1) if chunks else np.zeros((3, 0), np.int64)
  return pos.astype(np.int32), int(pos.max()) + 1 if pos.size else 0


# ------------------------------------------------------------- params and checkpoints


def param_shapes(cfg: TargetConfig, dtype=jnp.float32) -> Params:
  v = cfg.vision
  e, f, merged = v.hidden_size, v.intermediate_size, v.hidden_size * v.merge_unit
  lin = lambda n_in, n_out: layers.linear_shapes(n_in, n_out, True, dtype)
  norm = lambda: {"scale": jax.ShapeDtypeStruct((e,), dtype)}
  block = lambda: {"norm1": norm(), "norm2": norm(), "attn": {p: lin(e, e) for p in "qkvo"},
                   "mlp": {"gate": lin(e, f), "up": lin(e, f), "down": lin(f, e)}}
  vision = {
      "patch_embed": {"kernel": jax.ShapeDtypeStruct((v.patch_dim, e), dtype)},
      "blocks": [block() for _ in range(v.depth)],
      "merger": {"ln_q": norm(), "fc1": lin(merged, merged), "fc2": lin(merged, v.out_hidden_size)},
  }
  return {"text": decoder.param_shapes(cfg.text, dtype), "vision": vision}


# transformers 5 in-memory names, and checkpoints written by other versions, spell the same
# tensors differently; fold them onto the names `save_pretrained` writes.
HF_PREFIX_RULES = [
    ("model.language_model.", "model."),
    ("model.visual.", "visual."),
    ("language_model.model.", "model."),
    ("language_model.lm_head.", "lm_head."),
]


def name_map(cfg: TargetConfig):
  nm = checkpoints.NameMap(HF_PREFIX_RULES)
  decoder.add_hf_names(nm, cfg.text)
  v = cfg.vision
  nm.add("visual.patch_embed.proj.weight", ("vision", "patch_embed", "kernel"), decoder.conv_kernel(
      (v.hidden_size, v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size)))
  for i in range(v.depth):
    hf, ours = f"visual.blocks.{i}.", ("vision", "blocks", i)
    nm.add(hf + "norm1.weight", ours + ("norm1", "scale"))
    nm.add(hf + "norm2.weight", ours + ("norm2", "scale"))
    for j, proj in enumerate("qkv"):  # fused qkv [3E, E] -> separate q, k, v
      sl = slice(j * v.hidden_size, (j + 1) * v.hidden_size)
      nm.add(hf + "attn.qkv.weight", ours + ("attn", proj, "kernel"),
             checkpoints.Transform(lambda a, sl=sl: a[sl].T, lambda a: a.T))
      nm.add(hf + "attn.qkv.bias", ours + ("attn", proj, "bias"),
             checkpoints.Transform(lambda a, sl=sl: a[sl], lambda a: a))
    decoder.add_linear(nm, hf + "attn.proj", ours + ("attn", "o"))
    for proj in ("gate", "up", "down"):
      decoder.add_linear(nm, hf + f"mlp.{proj}_proj", ours + ("mlp", proj))
  nm.add("visual.merger.ln_q.weight", ("vision", "merger", "ln_q", "scale"))
  decoder.add_linear(nm, "visual.merger.mlp.0", ("vision", "merger", "fc1"))
  decoder.add_linear(nm, "visual.merger.mlp.2", ("vision", "merger", "fc2"))
  return nm


# ------------------------------------------------------------------ preprocessing


def make_image_processor(folder: str | None, cfg: TargetConfig):
  """transformers' PIL image processor (no torchvision), with the folder's settings if any."""
  from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
  raw = checkpoints.preprocessor_config(folder)
  kwargs = {k: raw[k] for k in ("min_pixels", "max_pixels", "image_mean", "image_std", "size")
            if k in raw}
  v = cfg.vision
  return Qwen2VLImageProcessorPil(patch_size=v.patch_size, merge_size=v.spatial_merge_size,
                                  temporal_patch_size=v.temporal_patch_size, **kwargs)


def _item(kind: str, patches: np.ndarray, grid: tuple, cfg: TargetConfig, **kw) -> VisionInput:
  layout = vision_layout(grid, cfg.vision)
  return VisionInput(kind, patches.astype(np.float32), len(layout.unmerge), grid, layout=layout,
                     **kw)


def preprocess_image(processor, cfg: TargetConfig, image):
  out = processor(images=[image], return_tensors="np")
  return _item("image", np.asarray(out["pixel_values"]),
               tuple(int(g) for g in out["image_grid_thw"][0]), cfg)


def preprocess_video(processor, cfg: TargetConfig, frames, fps: float = 2.0):
  """Frames (PIL, RGB) -> temporal patches: pairs of frames form one temporal patch; every frame
  is resized to the first frame's processor size and normalised the way images are."""
  from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize
  v = cfg.vision
  p, m, tp = v.patch_size, v.spatial_merge_size, v.temporal_patch_size
  h, w = smart_resize(frames[0].height, frames[0].width, factor=p * m,
                      min_pixels=processor.size["shortest_edge"],
                      max_pixels=processor.size["longest_edge"])
  mean = np.asarray(processor.image_mean, np.float32)[:, None, None]
  std = np.asarray(processor.image_std, np.float32)[:, None, None]
  arrays = [(np.asarray(f.resize((w, h), Image.BICUBIC), np.float32).transpose(2, 0, 1) / 255.0
             - mean) / std for f in frames]
  arrays += [arrays[-1]] * (-len(arrays) % tp)  # repeat the last frame to fill a temporal patch
  t, gh, gw = len(arrays) // tp, h // p, w // p
  x = np.stack(arrays).reshape(t, tp, v.in_channels, gh // m, m, p, gw // m, m, p)
  x = x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8).reshape(t * gh * gw, -1)
  return _item("video", x, (t, gh, gw), cfg, seconds_per_grid=tp / fps)


def vision_placeholder(cfg: TargetConfig, kind: str) -> tuple[str, int]:
  """(text inserted for one image/video when there is no chat template, token id to expand)."""
  if kind == "image":
    return "<|vision_start|><|image_pad|><|vision_end|>", cfg.image_token_id
  return "<|vision_start|><|video_pad|><|vision_end|>", cfg.video_token_id
