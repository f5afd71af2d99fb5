"""Draft models and the drafter protocol.

Drafters (`make_drafter(cfg)` picks one by `cfg.kind`):
  EagleDrafter   "eagle"   text-only EAGLE baseline: image tokens are ordinary positions (`eagle.py`).
  ViSpecDrafter  "vispec"  vision adaptor + global image feature (`vispec.py`).
  MedusaDrafter  "medusa"  Medusa heads baseline, no cache (`medusa.py`).
What they share (config, parameters, the decoder layer, state) is in `base.py`; loading and
saving checkpoints in `checkpoints.py`.

A drafter object is static (hashable: it holds only its config) and implements the protocol the
speculative loop (`engine/speculative.py`) and tree builder (`engine/tree.py`) use:
  start(params, head, ctx)                       -> (state, root_logp [B, V])
  root_hidden(state)                             -> [B, E] hidden after the tree's root
  step(params, head, state, level, offset, tokens, parent_hidden, scratch_mask)
                                                 -> (logp [B, n, V], hidden [B, n, E], state)
  commit(params, head, state, features, next_tokens, n_valid) -> (state, root_logp [B, V])
`level` and `offset` are Python ints (static).
"""

from __future__ import annotations

import jax

from vispec_jax.configs import TextConfig
from vispec_jax.draft.base import (KINDS, DraftConfig, DraftState, Params, PrefillContext, fuse,
                                   head_params, init_params, layer_forward, log_probs,
                                   param_shapes, prompt_positions, shifted_embeds)
from vispec_jax.draft.eagle import EagleDrafter
from vispec_jax.draft.medusa import MedusaDrafter
from vispec_jax.draft.vispec import ViSpecDrafter

__all__ = ["KINDS", "DRAFTERS", "DRAFTER_METHODS", "DraftConfig", "DraftState", "Params",
           "PrefillContext", "EagleDrafter", "ViSpecDrafter", "MedusaDrafter", "make_drafter",
           "check_drafter", "check_params", "fuse", "head_params", "init_params",
           "layer_forward", "log_probs", "param_shapes", "prompt_positions", "shifted_embeds"]

DRAFTERS = {"eagle": EagleDrafter, "vispec": ViSpecDrafter, "medusa": MedusaDrafter}
assert set(DRAFTERS) == set(KINDS)


def make_drafter(cfg: DraftConfig):
  """The drafter object for `cfg.kind` (static, hashable: pass it to speculative_generate)."""
  return DRAFTERS[cfg.kind](cfg)


DRAFTER_METHODS = ("start", "root_hidden", "step", "commit")


def _is_drafter(x) -> bool:
  return all(callable(getattr(x, m, None)) for m in DRAFTER_METHODS)


def check_drafter(drafter, params=None, text: TextConfig | None = None) -> None:
  """Clear errors for the drafter and draft-params arguments of the speculative entry points:
  the wrong kind of object (draft params, a `Draft`, a `DraftConfig` where the drafter goes),
  params that do not fit the drafter, a drafter made for another target (`text`)."""
  if not _is_drafter(drafter):
    kind = type(drafter).__name__
    if isinstance(drafter, DraftConfig):
      hint = "a DraftConfig: pass vj.make_drafter(cfg)"
    elif hasattr(drafter, "drafter") and hasattr(drafter, "params"):
      hint = "a Draft: pass draft.drafter, then draft.params"
    elif isinstance(drafter, (dict, list, tuple)):
      hint = f"a {kind} (draft params?): the drafter (draft.drafter) goes first, its params second"
    else:
      hint = f"a {kind}"
    raise TypeError(f"drafter must be a drafter object with {', '.join(DRAFTER_METHODS)} "
                    f"(draft.drafter or vj.make_drafter(cfg)), got {hint}")
  cfg = getattr(drafter, "cfg", None)
  if isinstance(cfg, DraftConfig) and text is not None:
    for field, want in (("vocab_size", text.vocab_size), ("hidden_size", text.hidden_size)):
      if getattr(cfg, field) != want:
        raise ValueError(f"the drafter's {field} {getattr(cfg, field)} does not match the "
                         f"target's {want}: this draft was made for another target")
  if params is None:
    return
  if _is_drafter(params):
    raise TypeError(f"draft params must be a params pytree, got a drafter "
                    f"({type(params).__name__}): the arguments are (target, drafter, draft_params, "
                    f"batch)")
  if hasattr(params, "drafter") and hasattr(params, "params"):
    raise TypeError("draft params must be a params pytree, got a Draft: pass draft.params")
  if isinstance(cfg, DraftConfig):
    check_params(cfg, params)


def check_params(cfg: DraftConfig, params) -> None:
  """ValueError naming the subtree or leaf where `params` differ from `param_shapes(cfg)`."""
  shapes = param_shapes(cfg)
  if jax.tree_util.tree_structure(shapes) != jax.tree_util.tree_structure(params):
    raise ValueError(f"draft params do not fit the {cfg.kind} drafter: expected the tree "
                     f"{_top_keys(shapes)}, got {_top_keys(params)}")
  for (path, w), g in zip(jax.tree_util.tree_leaves_with_path(shapes), jax.tree.leaves(params)):
    if tuple(getattr(g, "shape", ())) != tuple(w.shape):
      raise ValueError(f"draft param {jax.tree_util.keystr(path)} has shape "
                       f"{tuple(getattr(g, 'shape', ()))}, the drafter expects {tuple(w.shape)}")


def _top_keys(tree) -> str:
  return repr(sorted(tree)) if isinstance(tree, dict) else type(tree).__name__
