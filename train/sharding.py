"""Sharding for training, on top of the library's one table of logical-axis rules
(`vispec_jax/sharding.py`: parameter paths -> logical axes -> mesh axes, heads never split).

What training adds: the batch is split over `data` AND `fsdp` (FSDP is data parallelism whose
parameters, gradients and optimizer state are split over `fsdp`), and the mesh shape comes from
the config as a (data, fsdp, tensor) tuple. `config.sharding.rules` may override entries of the
library's `RULES` (logical axis -> mesh axis) for an experiment.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from vispec_jax import sharding as vs

MESH_AXES = vs.AXES            # ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # the batch dimension of training inputs


def rules(overrides: Mapping[str, str | None] | None = None) -> dict:
  out = dict(vs.RULES)
  for key, value in (overrides or {}).items():
    if key not in out:
      raise ValueError(f"unknown logical axis {key!r} in sharding.rules; known: {sorted(out)}")
    if value is not None and value not in MESH_AXES:
      raise ValueError(f"sharding.rules: {key!r} -> {value!r} is not a mesh axis {MESH_AXES}")
    out[key] = value
  return out


def make_mesh(shape: Sequence[int]) -> Mesh:
  """A (data, fsdp, tensor) mesh over all devices (Auto axes); one entry may be -1."""
  shape = tuple(shape)
  if len(shape) != 3:
    raise ValueError(f"config.mesh needs 3 entries (data, fsdp, tensor), got {shape}")
  try:
    return vs.make_mesh(dict(zip(MESH_AXES, shape)))
  except ValueError as e:
    raise ValueError(f"config.mesh {shape}: {e}") from None


def param_shardings(params, mesh: Mesh, head_dim, table=None):
  """NamedSharding of every parameter (see `vispec_jax.sharding.param_shardings`)."""
  return vs.param_shardings(params, mesh, head_dim, table or vs.RULES)


def batch_sharding(mesh: Mesh, ndim: int, batch_axis: int = 0) -> NamedSharding:
  """A batch array: dimension `batch_axis` split over data x fsdp."""
  axes = [None] * ndim
  axes[batch_axis] = BATCH_AXES
  return NamedSharding(mesh, P(*axes))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_divisor(mesh) -> int:
  """The global batch must be a multiple of this (the devices the batch is split over)."""
  return int(np.prod([mesh.shape[a] for a in BATCH_AXES]))


def head_dims(cfg) -> dict[str, int]:
  """Head size per subtree of a target's params (a head is never split across devices)."""
  dims = {"text": cfg.text.head_dim}
  vision = cfg.vision
  if vision is not None:
    dims["vision"] = getattr(vision, "clip", vision).head_dim
  return dims
