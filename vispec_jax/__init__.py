"""vispec-jax: ViSpec vision-aware speculative decoding for VLMs in JAX.

Public surface:
  load_target(folder) -> Target        a Hugging Face VLM checkpoint as params + pure functions
  prepare(target, prompts, images)     prompts and images -> a fixed-shape Batch
  target.forward(params, batch)        full-sequence logits and hidden states
  generate(target, batch, ...)         vanilla decoding, one jitted while_loop
  load_draft(folder, target) -> Draft  a released ViSpec checkpoint or ours (save_draft)
  speculative_generate(target, drafter, draft_params, batch, tree=TreeConfig(), ...)
                                       tree speculative decoding, one jitted while_loop
                                       (drafter = draft.drafter or make_drafter(cfg))
  TextStreamer(tokenizer)              on_tokens= for either loop: prints text as rounds land
"""

from vispec_jax.checkpoints import CheckpointError
from vispec_jax.configs import ConfigError, GenerationConfig, TargetConfig, TextConfig, QwenVisionConfig
from vispec_jax.engine.decoding import GenerateOutput, generate, trim
from vispec_jax.draft import DraftConfig, EagleDrafter, make_drafter
from vispec_jax.draft.checkpoints import Draft, load_draft, save_draft
from vispec_jax.draft.medusa import MedusaDrafter
from vispec_jax.draft.vispec import ViSpecDrafter
from vispec_jax.processing import Batch, InputError, load_image
from vispec_jax.engine.speculative import SpecOutput, SpecStats, speculative_fn, speculative_generate
from vispec_jax.engine.streaming import TextStreamer
from vispec_jax.engine import tree  # vj.tree.from_spec, vj.tree.chain
from vispec_jax.target import Target, init_target, load_target, prepare
from vispec_jax.engine.tree import TreeConfig

__all__ = [
    "Batch", "CheckpointError", "ConfigError", "Draft", "DraftConfig", "EagleDrafter",
    "GenerateOutput", "MedusaDrafter", "ViSpecDrafter", "load_draft", "make_drafter", "save_draft",
    "GenerationConfig", "InputError", "QwenVisionConfig", "SpecOutput", "SpecStats", "Target",
    "TargetConfig", "TextConfig", "TextStreamer", "TreeConfig", "generate", "init_target",
    "load_image", "load_target", "prepare", "speculative_fn", "speculative_generate", "trim",
]
