"""Mesh and logical-axis sharding for training: the one place that maps names to mesh axes.

Mesh axes: ("data", "fsdp", "tensor"). The batch is split over data x fsdp; parameters (the draft,
its optimizer state and the frozen target) are split over fsdp on their embedding dimension and
over tensor on their heads / MLP / vocabulary dimension.

Every parameter gets logical axis names from its path (`param_axes`), and `RULES` maps logical
names to mesh axes. Trying another strategy means editing `RULES` (or `config.sharding.rules`),
nothing else. A dimension that its mesh axes do not divide is replicated instead (tiny models on
big meshes), never an error.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis -> mesh axis (or axes, or None = replicated).
RULES = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("hidden", "tensor"),   # attention heads x head_dim, MLP hidden
    ("heads", "tensor"),
    ("vocab", "tensor"),
    ("length", None),
)

# Linear layers whose input is the wide (heads / MLP) side: their kernel is [hidden, embed].
_DOWN = {"o", "down", "fc2", "linear_2"}


def make_mesh(shape: Sequence[int], devices=None) -> Mesh:
  """A (data, fsdp, tensor) mesh with Auto axes (classic NamedSharding propagation).

  `shape` may hold one -1, filled with the remaining devices."""
  devices = jax.devices() if devices is None else devices
  shape = list(shape)
  if len(shape) != 3:
    raise ValueError(f"mesh shape needs 3 entries (data, fsdp, tensor), got {shape}")
  if shape.count(-1) > 1:
    raise ValueError(f"at most one -1 in the mesh shape, got {shape}")
  if -1 in shape:
    rest = int(np.prod([s for s in shape if s != -1]))
    shape[shape.index(-1)] = len(devices) // rest
  if int(np.prod(shape)) != len(devices):
    raise ValueError(f"mesh {tuple(shape)} needs {int(np.prod(shape))} devices, "
                     f"{len(devices)} are available")
  return jax.make_mesh(tuple(shape), MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def _key(k) -> str:
  return str(getattr(k, "key", getattr(k, "idx", k)))


def param_axes(path, shape) -> tuple[str | None, ...]:
  """Logical axis names of one parameter, from its path in the params pytree."""
  names = [_key(k) for k in path]
  leaf, parent = names[-1], (names[-2] if len(names) > 1 else "")
  if leaf == "kernel" and len(shape) == 2:
    if parent == "lm_head":
      return ("embed", "vocab")
    return ("hidden", "embed") if parent in _DOWN else ("embed", "hidden")
  if leaf == "embed" and len(shape) == 2:       # token embedding table [V, E]
    return ("vocab", "embed")
  if parent == "adaptor" and leaf == "q":       # ViSpec queries [Q, N, D]
    return (None, "heads", None)
  return (None,) * len(shape)                   # norms, biases, small tables: replicated


def spec(axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules=RULES) -> P:
  """PartitionSpec for logical `axes`; dimensions the mesh axes do not divide stay whole."""
  table = dict(rules)
  out, used = [], set()
  for name, dim in zip(axes, shape):
    mesh_axes = table.get(name) if name is not None else None
    if mesh_axes is None:
      out.append(None)
      continue
    mesh_axes = (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)
    if used & set(mesh_axes):
      raise ValueError(f"logical axes {tuple(axes)} map mesh axis {sorted(used & set(mesh_axes))} "
                       "twice")
    size = int(np.prod([mesh.shape[a] for a in mesh_axes]))
    if dim % size:
      out.append(None)
      continue
    used |= set(mesh_axes)
    out.append(mesh_axes[0] if len(mesh_axes) == 1 else mesh_axes)
  return P(*out)


def param_shardings(params, mesh: Mesh, rules=RULES):
  """NamedSharding for every leaf of a params pytree (arrays or ShapeDtypeStructs)."""
  def one(path, x):
    return NamedSharding(mesh, spec(param_axes(path, x.shape), x.shape, mesh, rules))
  return jax.tree_util.tree_map_with_path(one, params)


def batch_sharding(mesh: Mesh, ndim: int, rules=RULES, batch_axis: int = 0) -> NamedSharding:
  """Sharding of a batch array: its `batch_axis` split over the batch mesh axes."""
  axes = [None] * ndim
  axes[batch_axis] = dict(rules)["batch"]
  return NamedSharding(mesh, P(*axes))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_divisor(mesh: Mesh, rules=RULES) -> int:
  """The global batch must be a multiple of this (the devices the batch is split over)."""
  axes = dict(rules)["batch"]
  axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
  return int(np.prod([mesh.shape[a] for a in axes]))
