"""Tiny models for tests, the quick-start command and examples: no download, no torch.

`make_tiny_qwen(folder)` and `make_tiny_llava(folder, next=...)` write complete Hugging Face-style
Qwen2.5-VL / LLaVA-1.5 / LLaVA-NeXT folders with random weights, loadable by `vj.load_target` and
by transformers (`python -m vispec_jax.testing /tmp/tiny-qwen`).
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from vispec_jax import checkpoints, layers, models

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
                  "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]

# A Qwen-style chat template, small enough to read: images/videos become
# <|vision_start|><|image_pad|><|vision_end|> (the processor expands the pad token).
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% else %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

_CORPUS = [
    "Describe the image in detail. What colour is the square? How many circles are there?",
    "The picture shows a red square, two blue circles and a green triangle on a white background.",
    "There is a small yellow star in the top left corner and a large purple shape at the bottom.",
    "Please answer with an explanation. The answer is yes because the object is on the left.",
]


def bpe_tokenizer(texts, vocab_size: int, special_tokens: list[str], chat_template: str,
                  add_bos: bool = False, min_frequency: int = 0, **special):
  """A byte-level BPE (any text encodes) trained on `texts`, as a transformers
  PreTrainedTokenizerFast; `add_bos`: "<s>" first when special tokens are asked for (LLaMA)."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
  from transformers import PreTrainedTokenizerFast
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special_tokens,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                min_frequency=min_frequency, show_progress=False)
  tok.train_from_iterator(texts, trainer)
  if add_bos:
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))])
  fast = PreTrainedTokenizerFast(tokenizer_object=tok, **special)
  fast.chat_template = chat_template
  return fast


def tiny_tokenizer(vocab_size: int = 320):
  """A byte-level BPE tokenizer with Qwen's special tokens and a Qwen-style chat template."""
  return bpe_tokenizer(_CORPUS * 4, vocab_size, SPECIAL_TOKENS, CHAT_TEMPLATE,
                       eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None)


def tiny_qwen_config(tokenizer, *, hidden: int = 64, layers: int = 2, heads: int = 4,
                     kv_heads: int = 2, vision_depth: int = 2, vision_hidden: int = 32,
                     tie: bool = False) -> dict:
  """A transformers-5 style config.json dict for a tiny Qwen2.5-VL matching `tokenizer`."""
  ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
  head_dim = hidden // heads
  hw = 3 * (head_dim // 2) // 8  # Qwen's [16, 24, 24] split of 64 frequency pairs, scaled
  section = [head_dim // 2 - 2 * hw, hw, hw]
  return {
      "architectures": ["Qwen2_5_VLForConditionalGeneration"],
      "model_type": "qwen2_5_vl",
      "image_token_id": ids["<|image_pad|>"], "video_token_id": ids["<|video_pad|>"],
      "vision_start_token_id": ids["<|vision_start|>"], "vision_end_token_id": ids["<|vision_end|>"],
      "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
      "pad_token_id": ids["<|endoftext|>"], "tie_word_embeddings": tie,
      "text_config": {
          "model_type": "qwen2_5_vl_text", "vocab_size": len(tokenizer), "hidden_size": hidden,
          "intermediate_size": 2 * hidden, "num_hidden_layers": layers,
          "num_attention_heads": heads, "num_key_value_heads": kv_heads, "rms_norm_eps": 1e-6,
          "hidden_act": "silu", "max_position_embeddings": 4096,
          "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": section},
          "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
          "pad_token_id": ids["<|endoftext|>"],
      },
      "vision_config": {
          "model_type": "qwen2_5_vl_vision", "depth": vision_depth, "hidden_size": vision_hidden,
          "intermediate_size": 2 * vision_hidden, "num_heads": 2, "out_hidden_size": hidden,
          "patch_size": 14, "temporal_patch_size": 2, "spatial_merge_size": 2,
          "window_size": 56, "fullatt_block_indexes": [vision_depth - 1], "in_channels": 3,
          "tokens_per_second": 2, "hidden_act": "silu",
      },
  }


PREPROCESSOR = {"min_pixels": 56 * 56, "max_pixels": 28 * 28 * 64, "patch_size": 14,
                "temporal_patch_size": 2, "merge_size": 2}


def write_tokenizer_and_processor(tokenizer, folder: str, preprocessor: dict | None = None):
  """The tokenizer's files and preprocessor_config.json (default: the tiny Qwen processor's)."""
  tokenizer.save_pretrained(folder)
  with open(os.path.join(folder, "preprocessor_config.json"), "w") as f:
    json.dump(preprocessor or {"image_processor_type": "Qwen2VLImageProcessor", **PREPROCESSOR},
              f, indent=1)


def _write_tiny(folder: str, tokenizer, raw: dict, seed: int, std: float = 0.02,
                preprocessor: dict | None = None, extra: dict | None = None) -> str:
  """A folder of config dict `raw`: random params, config.json, tokenizer, processor settings."""
  os.makedirs(folder, exist_ok=True)
  cfg = models.config_from_hf(raw)
  fam = models.family(cfg)
  params = layers.init_params(fam.param_shapes(cfg), jax.random.PRNGKey(seed), std)
  checkpoints.save_hf(params, fam.name_map(cfg), os.path.join(folder, "model.safetensors"),
                      extra=extra)
  with open(os.path.join(folder, "config.json"), "w") as f:
    json.dump(raw, f, indent=1)
  write_tokenizer_and_processor(tokenizer, folder, preprocessor)
  return folder


def make_tiny_qwen(folder: str, seed: int = 0, **config_kwargs) -> str:
  """Writes a random tiny Qwen2.5-VL checkpoint folder (torch-free) and returns its path."""
  tok = tiny_tokenizer()
  return _write_tiny(folder, tok, tiny_qwen_config(tok, **config_kwargs), seed)


# ------------------------------------------------------------------------ LLaVA

LLAVA_SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]

# LLaVA-1.5 style ("USER: <image>\n... ASSISTANT:"); images become one <image> each.
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] | upper }}: "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>\n{% else %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %} {% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}")


def tiny_llava_tokenizer(vocab_size: int = 320):
  """A byte-level BPE tokenizer with LLaMA's special tokens and `<image>`; like LLaMA's it adds
  `<s>` when asked for special tokens."""
  return bpe_tokenizer(_CORPUS * 4, vocab_size, LLAVA_SPECIAL_TOKENS, LLAVA_CHAT_TEMPLATE,
                       add_bos=True, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                       unk_token="<unk>")


TINY_PINPOINTS = [[28, 56], [56, 28], [56, 56], [28, 84], [84, 28]]


def tiny_llava_config(tokenizer, *, next: bool = False, hidden: int = 64, layers: int = 2,  # pylint: disable=redefined-builtin
                      heads: int = 4, kv_heads: int = 2, vision_layers: int = 3,
                      vision_hidden: int = 32, image_size: int = 28, patch_size: int = 7,
                      feature_layer=-2, strategy: str = "default", pinpoints=None,
                      tie: bool = False) -> dict:
  """A transformers-5 style config.json dict for a tiny LLaVA-1.5 (or LLaVA-NeXT if `next`)."""
  ids = {t: tokenizer.convert_tokens_to_ids(t) for t in LLAVA_SPECIAL_TOKENS}
  raw = {
      "architectures": ["LlavaNextForConditionalGeneration" if next else "LlavaForConditionalGeneration"],
      "model_type": "llava_next" if next else "llava",
      "image_token_index": ids["<image>"], "projector_hidden_act": "gelu",
      "vision_feature_layer": feature_layer, "vision_feature_select_strategy": strategy,
      "multimodal_projector_bias": True, "tie_word_embeddings": tie,
      "pad_token_id": ids["<pad>"],
      "text_config": {
          "model_type": "llama", "vocab_size": len(tokenizer), "hidden_size": hidden,
          "intermediate_size": 2 * hidden, "num_hidden_layers": layers,
          "num_attention_heads": heads, "num_key_value_heads": kv_heads, "rms_norm_eps": 1e-5,
          "hidden_act": "silu", "max_position_embeddings": 4096, "tie_word_embeddings": tie,
          "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
          "bos_token_id": ids["<s>"], "eos_token_id": ids["</s>"], "pad_token_id": ids["<pad>"],
      },
      "vision_config": {
          "model_type": "clip_vision_model", "hidden_size": vision_hidden,
          "intermediate_size": 2 * vision_hidden, "num_hidden_layers": vision_layers,
          "num_attention_heads": 2, "image_size": image_size, "patch_size": patch_size,
          "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "projection_dim": vision_hidden,
      },
  }
  if next:
    raw["image_grid_pinpoints"] = pinpoints or TINY_PINPOINTS
  return raw


def llava_preprocessor_config(raw: dict) -> dict:
  s, pinpoints = raw["vision_config"]["image_size"], raw.get("image_grid_pinpoints")
  return {"image_processor_type": "LlavaNextImageProcessor" if pinpoints else "LlavaImageProcessor",
          "size": {"shortest_edge": s}, "crop_size": {"height": s, "width": s},
          "image_mean": [0.48145466, 0.4578275, 0.40821073],
          "image_std": [0.26862954, 0.26130258, 0.27577711],
          **({"image_grid_pinpoints": pinpoints} if pinpoints else {})}


def make_tiny_llava(folder: str, next: bool = False, seed: int = 0, std: float = 0.02,  # pylint: disable=redefined-builtin
                    **config_kwargs) -> str:
  """Writes a random tiny LLaVA-1.5 (or LLaVA-NeXT) checkpoint folder, torch-free, loadable by
  `vj.load_target` and by transformers; returns its path."""
  tok = tiny_llava_tokenizer()
  raw = tiny_llava_config(tok, next=next, **config_kwargs)
  # CLIP's post_layernorm is unused by LLaVA (not in our params); written so that transformers
  # finds a complete checkpoint.
  e = raw["vision_config"]["hidden_size"]
  extra = {"vision_tower.post_layernorm.weight": np.ones(e, np.float32),
           "vision_tower.post_layernorm.bias": np.zeros(e, np.float32)}
  return _write_tiny(folder, tok, raw, seed, std, llava_preprocessor_config(raw), extra)


def scene_image(width: int = 112, height: int = 84, seed: int = 0):
  """A small deterministic test picture (coloured rectangles on noise)."""
  rng = np.random.default_rng(seed)
  a = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
  for _ in range(3):
    x0, y0 = rng.integers(0, width // 2), rng.integers(0, height // 2)
    a[y0:y0 + height // 3, x0:x0 + width // 3] = rng.integers(0, 255, 3)
  return Image.fromarray(a)


@dataclasses.dataclass(frozen=True)
class OracleDrafter:
  """A drafter that already knows the answer, params = {"reference": int32[B, N]} (the target's
  own greedy tokens), so every greedy round accepts the full tree depth: tests the engine's
  bookkeeping (KV compaction, positions, per-row lengths) independently of draft quality."""
  vocab_size: int

  def _logp(self, params, index):
    ref = params["reference"]
    tok = jnp.take_along_axis(ref, jnp.clip(index, 0, ref.shape[1] - 1), axis=1)
    # Reference token first, then the other tokens in a fixed order (for top-k branching).
    base = -jnp.arange(self.vocab_size, dtype=jnp.float32) / self.vocab_size
    return jax.nn.log_softmax(base + 10.0 * jax.nn.one_hot(tok, self.vocab_size), axis=-1)

  def root_hidden(self, state):
    return jnp.zeros((state.shape[0], 1))

  def start(self, params, head, ctx):
    n = jnp.zeros((ctx.root.shape[0],), jnp.int32)  # reference index of the root
    return n, self._logp(params, n[:, None] + 1)[:, 0]

  def step(self, params, head, state, level, offset, tokens, parent_hidden, scratch_mask):
    b, n = tokens.shape
    logp = self._logp(params, jnp.broadcast_to(state[:, None] + level + 2, (b, n)))
    return logp, jnp.zeros((b, n, 1)), state

  def commit(self, params, head, state, features, next_tokens, n_valid):
    state = state + n_valid
    return state, self._logp(params, state[:, None] + 1)[:, 0]
