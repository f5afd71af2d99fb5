"""Device meshes and the one table of logical-axis rules.

Every parameter and cache array gets logical axis names from its path and rank (`logical_axes`);
`RULES` maps logical names to mesh axes. Trying another layout means editing `RULES` only. A
dimension that the mesh axis does not divide (e.g. 2 kv heads on tensor=4) is replicated instead.

Mesh axes: `data` (batch), `fsdp` (parameter sharding for training), `tensor` (heads, MLP, vocab).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axis (or None: replicated)
RULES: dict[str, str | None] = {
    "batch": "data",
    "embed": "fsdp",
    "heads": "tensor",
    "kv_heads": "tensor",
    "mlp": "tensor",
    "vocab": "tensor",
    "length": None,
    "head_dim": None,
    "patch": None,
}


def parse_mesh(spec: str | Mapping[str, int]) -> dict[str, int]:
  """"data=2,tensor=4" (or a dict) -> {"data": 2, "fsdp": 1, "tensor": 4}: each axis named once
  with a positive size or -1 (one axis at most: the rest of the devices); the sizes multiply to
  the number of devices."""
  if isinstance(spec, str):
    if not spec.replace(",", "").strip():
      raise ValueError("empty mesh spec: expected e.g. 'data=2,tensor=4'")
    items = {}
    for part in spec.split(","):
      m = re.fullmatch(r"\s*(\w+)\s*=\s*([+-]?\d+)\s*", part)
      if not m:
        raise ValueError(f"bad mesh spec {spec!r}: expected AXIS=SIZE pairs, e.g. 'data=2,tensor=4'")
      if m.group(1) in items:
        raise ValueError(f"mesh axis {m.group(1)!r} is given twice in {spec!r}")
      items[m.group(1)] = int(m.group(2))
  else:
    items = dict(spec)
  unknown = set(items) - set(AXES)
  if unknown:
    raise ValueError(f"unknown mesh axes {sorted(unknown)}; known: {AXES}")
  for axis, size in items.items():
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not (
        size >= 1 or size == -1):
      raise ValueError(f"mesh axis {axis} size must be a positive integer or -1 (the rest), "
                       f"got {size!r}")
  shape = {a: int(items.get(a, 1)) for a in AXES}
  n = jax.device_count()
  free = [a for a, s in shape.items() if s == -1]
  if len(free) > 1:
    raise ValueError("at most one mesh axis may be -1")
  if free:
    rest = math.prod(s for s in shape.values() if s != -1)
    if n % rest:
      raise ValueError(f"mesh {spec!r}: {n} devices cannot be split into {rest} x a whole number")
    shape[free[0]] = n // rest
  if math.prod(shape.values()) != n:
    raise ValueError(f"mesh {shape} needs {math.prod(shape.values())} devices, have {n}")
  return shape


def make_mesh(spec: str | Mapping[str, int] = "data=-1") -> Mesh:
  shape = parse_mesh(spec)
  devices = np.asarray(jax.devices()).reshape(tuple(shape[a] for a in AXES))
  return Mesh(devices, AXES)


# module name -> logical axes of its kernel [in, out]; its bias has the out axis
_LINEAR_AXES = {"lm_head": ("embed", "vocab"), "q": ("embed", "heads"), "k": ("embed", "kv_heads"),
                "v": ("embed", "kv_heads"), "o": ("heads", "embed"), "gate": ("embed", "mlp"),
                "up": ("embed", "mlp"), "fc1": ("embed", "mlp"), "down": ("mlp", "embed"),
                "fc2": ("mlp", "embed")}


def logical_axes(path: tuple, ndim: int) -> tuple[str | None, ...]:
  """Logical axis names of a parameter from its path in the params tree."""
  names = [getattr(k, "key", getattr(k, "idx", None)) for k in path]
  leaf, parent = names[-1], (names[-2] if len(names) > 1 else None)
  if leaf == "embed":
    return ("vocab", "embed")
  if parent in _LINEAR_AXES:
    axes = _LINEAR_AXES[parent]
    return axes if leaf == "kernel" else axes[1:]
  return (None,) * ndim  # norms, patch embeddings, adaptor queries: replicated


def spec_for(axes: tuple, shape: tuple[int, ...], mesh: Mesh, rules=RULES,
             granule: Mapping[str, int] | None = None) -> P:
  """PartitionSpec for logical axes, replicating dims the mesh axis does not divide.

  `granule` gives the unit a logical axis must be split in: heads are stored flattened as
  heads * head_dim, and a head is never split across devices.
  """
  out, used = [], set()
  for name, dim in zip(axes, shape):
    mesh_axis = rules.get(name) if name else None
    unit = (granule or {}).get(name, 1)
    if mesh_axis is None or mesh_axis in used or (dim // unit) % mesh.shape[mesh_axis]:
      out.append(None)
    else:
      out.append(mesh_axis)
      used.add(mesh_axis)
  return P(*out)


def constrain(x: jax.Array, axes: tuple[str | None, ...], rules=RULES) -> jax.Array:
  """Pins `x` (inside jit) to the layout the rules give its logical `axes`, on the mesh set with
  `jax.set_mesh(mesh)`; a no-op without one. Used for arrays created inside the program (KV
  caches), whose layout would otherwise be left to XLA's propagation."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  return jax.lax.with_sharding_constraint(x, spec_for(axes, x.shape, mesh, rules))


CACHE_AXES = ("batch", "kv_heads", "length", "head_dim")  # every KV cache: [B, K, S, D]


def param_specs(shapes, mesh, head_dim: int | Mapping[str, int] = 1, rules=RULES):
  """PartitionSpec for every leaf of a params (or ShapeDtypeStruct) tree. `head_dim`: one int,
  or per top-level subtree (e.g. {"text": 128, "vision": 80}). `mesh` needs only `.shape`."""
  def one(path, x):
    top = getattr(path[0], "key", None)
    hd = head_dim.get(top, 1) if isinstance(head_dim, Mapping) else head_dim
    return spec_for(logical_axes(path, len(x.shape)), x.shape, mesh, rules,
                    {"heads": hd, "kv_heads": hd})
  return jax.tree_util.tree_map_with_path(one, shapes)


def param_shardings(shapes, mesh: Mesh, head_dim: int | Mapping[str, int] = 1, rules=RULES):
  """NamedSharding for every leaf (see `param_specs`)."""
  return jax.tree.map(lambda spec: NamedSharding(mesh, spec),
                      param_specs(shapes, mesh, head_dim, rules),
                      is_leaf=lambda x: isinstance(x, P))


def shard_params(params, mesh: Mesh, head_dim: int | Mapping[str, int] = 1, rules=RULES):
  return jax.device_put(params, param_shardings(params, mesh, head_dim, rules))


def batch_sharding(mesh: Mesh, shape: tuple[int, ...], batch_axis: int = 0) -> NamedSharding:
  """Shard `batch_axis` over `data` (replicated if it does not divide)."""
  axes = [None] * len(shape)
  axes[batch_axis] = "batch"
  return NamedSharding(mesh, spec_for(tuple(axes), shape, mesh))


def shard_batch(batch, mesh: Mesh):
  """A `Batch` with its arrays placed on the mesh, rows over `data`."""
  put = lambda a, axis=0: jax.device_put(a, batch_sharding(mesh, a.shape, axis))
  return dataclasses.replace(
      batch, input_ids=put(batch.input_ids), attention_mask=put(batch.attention_mask),
      positions=put(batch.positions, batch.positions.ndim - 2), next_position=put(batch.next_position),
      vision_index=put(batch.vision_index), prompt_lengths=put(batch.prompt_lengths))


class MeshShape:
  """Axis sizes only: enough to compute specs and memory without devices."""

  def __init__(self, **sizes: int):
    self.shape = {a: sizes.get(a, 1) for a in AXES}


def bytes_per_device(shapes, mesh, head_dim: int | Mapping[str, int] = 1, rules=RULES) -> int:
  """Bytes one device holds for a params tree under these rules (from shapes only)."""
  specs = jax.tree.leaves(param_specs(shapes, mesh, head_dim, rules),
                          is_leaf=lambda x: isinstance(x, P))
  return sum(_device_bytes(x.shape, np.dtype(x.dtype).itemsize, spec, mesh)
             for x, spec in zip(jax.tree.leaves(shapes), specs))


def _device_bytes(shape: tuple[int, ...], itemsize: int, spec: P, mesh) -> int:
  """Bytes of one device's slice of an array of `shape` laid out by `spec`."""
  n = math.prod(shape) * itemsize
  for axis in spec:
    if axis is not None:
      n //= mesh.shape[axis]
  return n


def kv_cache_bytes_per_device(text_cfg, batch: int, length: int, mesh, itemsize: int = 2) -> int:
  """KV cache of a decoder (k and v [B, K, S, D] per layer) on one device, laid out by
  CACHE_AXES (batch over data, kv heads over tensor when they divide)."""
  shape = (batch, text_cfg.num_kv_heads, length, text_cfg.head_dim)
  per_layer = _device_bytes(shape, itemsize, spec_for(CACHE_AXES, shape, mesh), mesh)
  return 2 * text_cfg.num_layers * per_layer
