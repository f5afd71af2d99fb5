"""Training's sharding over the library's one logical-axis table (`vispec_jax/sharding.py`): the
batch is split over `data` AND `fsdp`, the mesh is `config.mesh` = (data, fsdp, tensor), and
`config.sharding.rules` may override the table's entries for an experiment.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from vispec_jax import sharding as vs

BATCH_AXES = ("data", "fsdp")  # the batch dimension of training inputs
param_shardings = vs.param_shardings  # (params, mesh, head_dim, rules) -> NamedSharding tree


def rules(overrides: Mapping[str, str | None] | None = None) -> dict:
  out = dict(vs.RULES)
  for key, value in (overrides or {}).items():
    if key not in out:
      raise ValueError(f"unknown logical axis {key!r} in sharding.rules; known: {sorted(out)}")
    if value is not None and value not in vs.AXES:
      raise ValueError(f"sharding.rules: {key!r} -> {value!r} is not a mesh axis {vs.AXES}")
    out[key] = value
  return out


def make_mesh(shape: Sequence[int]) -> Mesh:
  """A (data, fsdp, tensor) mesh over all devices (Auto axes); one entry may be -1."""
  try:
    return vs.make_mesh(dict(zip(vs.AXES, shape)))
  except ValueError as e:
    raise ValueError(f"config.mesh {tuple(shape)}: {e}") from None


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """A batch array: its first dimension split over data x fsdp."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_divisor(mesh) -> int:
  """The global batch must be a multiple of this (the devices the batch is split over)."""
  return int(np.prod([mesh.shape[a] for a in BATCH_AXES]))


def head_dims(cfg) -> dict[str, int]:
  """Head size per subtree of a target's params (a head is never split across devices)."""
  dims = {"text": cfg.text.head_dim}
  if cfg.vision is not None:
    dims["vision"] = getattr(cfg.vision, "clip", cfg.vision).head_dim
  return dims
