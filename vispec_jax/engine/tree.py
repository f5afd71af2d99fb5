"""Draft token trees with fixed shapes: the EAGLE-2 dynamic tree and static trees from paths.

A tree of T nodes is three int32[B, T] arrays: `tokens`, `parents` (-1 for the root, node 0) and
`depths` (root 0). Nodes are topologically sorted (parent index < child index), so ancestor
masks come from a few pointer-jumping steps and everything stays inside jit.

Trees are grown by a drafter `step` function that, for one level, takes the nodes to expand and
returns their next-token log-probabilities:

    step(state, level, offset, tokens[B, n], parent_hidden[B, n, E], scratch_mask[B, n, W])
        -> (logp[B, n, V], hidden[B, n, E], state)

`parent_hidden` is the drafter's output hidden at each node's parent (the root's for level 0),
which the builder gathers from the previous level's outputs. `scratch_mask` says which of the W draft scratch
slots (one per node fed so far, in feeding order; the current nodes are written at `offset`..)
each node may attend to: its own ancestors and itself. The nodes of this level are written at
scratch slots offset, offset + 1, ... (a static int).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class Tree(NamedTuple):
  tokens: jax.Array   # int32[B, T]
  parents: jax.Array  # int32[B, T], -1 at the root
  depths: jax.Array   # int32[B, T], 0 at the root


@dataclasses.dataclass(frozen=True)
class TreeConfig:
  """`paths=None`: EAGLE-2 dynamic tree (depth expansion steps, top_k branching, total_tokens
  nodes including the root). Otherwise a static tree: each path is a tuple of child ranks from
  the root, e.g. ((0,), (1,), (0, 0)) = top-1 and top-2 children, and top-1 grandchild of top-1.
  Defaults are the ViSpec paper's (depth 3, top_k 8, 30 tokens).

  Bounded so that a tree compiles in reasonable time: the drafter is unrolled once per level,
  so compile time grows linearly with depth (docs/api.md has the measurements). `depth` (or the
  longest static path) is at most MAX_DEPTH, nodes (total_tokens, or paths + root) at most
  MAX_NODES, top_k (or a static child rank + 1) at most MAX_NODES. Static paths are stored
  sorted and deduplicated, so equal trees compare (and hash, as jit static arguments) equal."""
  depth: int = 3
  top_k: int = 8
  total_tokens: int = 30
  paths: tuple[tuple[int, ...], ...] | None = None

  def __post_init__(self):
    if self.paths is None:
      for name in ("depth", "top_k", "total_tokens"):
        _check_int(name, getattr(self, name))
      if self.depth < 1 or self.top_k < 1:
        raise ValueError(f"tree depth and top_k must be >= 1, got {self.depth}, {self.top_k}")
      if self.depth > MAX_DEPTH:
        raise ValueError(f"tree depth {self.depth} is more than the maximum {MAX_DEPTH} (compile "
                         f"time grows with depth)")
      if self.top_k > MAX_NODES:
        raise ValueError(f"tree top_k {self.top_k} is more than the maximum {MAX_NODES}")
      most = min(1 + self.top_k + self.depth * self.top_k ** 2, MAX_NODES)
      if not 2 <= self.total_tokens <= most:
        raise ValueError(f"total_tokens must be in [2, {most}] for depth {self.depth}, top_k "
                         f"{self.top_k} (at most {MAX_NODES} nodes); got {self.total_tokens}")
    else:
      object.__setattr__(self, "paths", _normalize_paths(self.paths))
      static_structure(self.paths)  # validates

  @property
  def num_nodes(self) -> int:
    return self.total_tokens if self.paths is None else len(self.paths) + 1

  @property
  def max_depth(self) -> int:
    """Deepest node below the root (the most draft tokens one round can accept)."""
    return self.depth + 1 if self.paths is None else max(len(p) for p in self.paths)

  @property
  def scratch_slots(self) -> int:
    """Draft scratch slots one round writes (nodes fed to the drafter)."""
    return sum(level_widths(self))


MAX_DEPTH = 16   # tokens one round can draft along a path (dynamic: expansion steps)
MAX_NODES = 128  # tree nodes including the root; also the largest top_k / child rank + 1


def level_widths(tree_cfg: TreeConfig) -> list[int]:
  """Nodes fed to the drafter at each tree level (one drafter step per level)."""
  if tree_cfg.paths is None:
    return [tree_cfg.top_k] * tree_cfg.depth
  return [len(level) for level in static_structure(tree_cfg.paths)["fed"]]


def _check_int(name: str, value) -> None:
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
    raise ValueError(f"tree {name} must be an integer, got {type(value).__name__} {value!r}")


def _normalize_paths(paths) -> tuple[tuple[int, ...], ...]:
  """Static tree paths as sorted, deduplicated tuples of ints, within the bounds."""
  if isinstance(paths, (str, bytes)) or not isinstance(paths, (list, tuple)):
    raise ValueError(f"tree paths must be a tuple of paths (each a tuple of child ranks, e.g. "
                     f"((0,), (1,), (0, 0))), got {type(paths).__name__}")
  out = set()
  for p in paths:
    if isinstance(p, (str, bytes)) or not isinstance(p, (list, tuple)):
      raise ValueError(f"tree path {p!r} must be a tuple of child ranks, e.g. (0, 1)")
    for r in p:
      _check_int(f"path {tuple(p)} rank", r)
    out.add(tuple(int(r) for r in p))
  if not out:
    raise ValueError("a static tree needs at least one path")
  deepest = max(len(p) for p in out)
  if min(len(p) for p in out) == 0:
    raise ValueError("tree path () is the root itself: every path needs at least one rank")
  if deepest > MAX_DEPTH:
    raise ValueError(f"tree path of length {deepest} is deeper than the maximum {MAX_DEPTH} "
                     f"(compile time grows with depth)")
  if len(out) + 1 > MAX_NODES:
    raise ValueError(f"tree has {len(out) + 1} nodes, more than the maximum {MAX_NODES}")
  rank = max(max(p) for p in out)
  if rank >= MAX_NODES:
    raise ValueError(f"tree child rank {rank} is more than the maximum {MAX_NODES - 1}")
  if min(min(p) for p in out) < 0:
    raise ValueError(f"tree path {min(out, key=min)} has a negative rank")
  return tuple(sorted(out, key=lambda p: (len(p), p)))


def check_tree(tree, vocab_size: int | None = None) -> None:
  """The `tree=` argument of the speculative entry points must be a TreeConfig; its branching
  must fit the vocabulary (top_k and child ranks pick among the drafter's top tokens)."""
  if not isinstance(tree, TreeConfig):
    hint = (f"; for a tree name use vj.tree.from_spec({tree!r})" if isinstance(tree, str) else "")
    raise TypeError(f"tree must be a vj.TreeConfig (e.g. vj.TreeConfig(depth=3, top_k=8, "
                    f"total_tokens=30) or vj.tree.chain(4)), got {type(tree).__name__}{hint}")
  if vocab_size is not None:
    wide = tree.top_k if tree.paths is None else 1 + max(max(p) for p in tree.paths)
    if wide > vocab_size:
      raise ValueError(f"the tree branches {wide} ways but the vocabulary has {vocab_size} tokens")


def chain(depth: int) -> TreeConfig:
  """A single path of `depth` top-1 tokens (speculative decoding without branching)."""
  _check_int("depth", depth)
  if not 1 <= depth <= MAX_DEPTH:  # before building the paths: chain(10**5) would not fit memory
    raise ValueError(f"chain depth must be in [1, {MAX_DEPTH}], got {depth}")
  return TreeConfig(paths=tuple((0,) * d for d in range(1, depth + 1)))


def from_spec(spec: str) -> TreeConfig:
  """A tree named on a command line: "dynamic" (TreeConfig(): EAGLE-2, depth 3, top_k 8, 30
  tokens), "dynamic-dDkKtT" (e.g. dynamic-d4k4t16) or "chainN" (e.g. chain4)."""
  if spec == "dynamic":
    return TreeConfig()
  m = re.fullmatch(r"dynamic-d(\d+)k(\d+)t(\d+)", spec)
  if m:
    d, k, t = map(int, m.groups())
    return TreeConfig(depth=d, top_k=k, total_tokens=t)
  m = re.fullmatch(r"chain(\d+)", spec)
  if m and int(m.group(1)) >= 1:
    return chain(int(m.group(1)))
  raise ValueError(f"unknown tree {spec!r}: use dynamic (depth 3, top_k 8, 30 tokens), "
                   "dynamic-dDkKtT (e.g. dynamic-d4k4t16) or chainN (e.g. chain4)")


def static_structure(paths) -> dict[str, Any]:
  """NumPy buffers of a static tree (its TreeConfig's sorted paths): parents, depths, child
  ranks, and per level the nodes fed to the drafter (those with children)."""
  index = {(): 0}
  for i, p in enumerate(paths):
    if p[:-1] not in index:
      raise ValueError(f"tree path {p} has no parent path {p[:-1]}")
    index[p] = i + 1
  n = len(paths) + 1
  parents = np.full(n, -1, np.int32)
  depths = np.zeros(n, np.int32)
  ranks = np.zeros(n, np.int32)
  for p, i in index.items():
    if p:
      parents[i], depths[i], ranks[i] = index[p[:-1]], len(p), p[-1]
  has_child = np.zeros(n, bool)
  has_child[parents[1:]] = True
  fed = [np.nonzero(has_child & (depths == d))[0] for d in range(1, depths.max())]
  return {"parents": parents, "depths": depths, "ranks": ranks, "fed": fed}


def ancestor_mask(parents: jax.Array, max_depth: int) -> jax.Array:
  """bool[B, T, T]: [b, q, j] is True iff node j is q itself or an ancestor of q."""
  t = parents.shape[-1]
  anc = jnp.broadcast_to(jnp.eye(t, dtype=bool), parents.shape + (t,))
  hop = parents
  for _ in range(max_depth):
    up = jax.nn.one_hot(hop, t, dtype=bool)  # hop == -1 gives all False
    anc = anc | up
    hop = jnp.where(hop >= 0, jnp.take_along_axis(parents, jnp.maximum(hop, 0), axis=-1), -1)
  return anc


def build(cfg: TreeConfig, root: jax.Array, root_logp: jax.Array, root_hidden: jax.Array,
          step: Callable, state):
  """Grows one tree per row. root: int32[B] (already chosen); root_logp: [B, V] the drafter's
  next-token log-probs after the root; root_hidden: [B, E] its hidden there. Returns (Tree, state)."""
  if cfg.paths is None:
    return _dynamic(cfg, root, root_logp, root_hidden, step, state)
  return _static(cfg, root, root_logp, root_hidden, step, state)


def _dynamic(cfg: TreeConfig, root, root_logp, root_hidden, step, state):
  """EAGLE-2: expand the top_k best frontier nodes per level by cumulative log-prob, keep the
  best total_tokens - 1 of all candidates."""
  b, k, width = root.shape[0], cfg.top_k, cfg.scratch_slots
  score, token = jax.lax.top_k(root_logp.astype(jnp.float32), k)  # level 1
  scores, tokens = [score], [token]
  parent_flat = [jnp.zeros((b, k), jnp.int32)]  # flat candidate index of the parent (0 = root)
  levels = [jnp.ones((b, k), jnp.int32)]
  frontier_flat = jnp.broadcast_to(1 + jnp.arange(k, dtype=jnp.int32), (b, k))
  parent_hidden = jnp.repeat(root_hidden[:, None], k, axis=1)
  scratch = jnp.zeros((b, k, width), bool).at[:, :, :k].set(jnp.eye(k, dtype=bool))
  for i in range(cfg.depth):
    logp, hidden, state = step(state, i, i * k, token, parent_hidden, scratch)
    lp, child = jax.lax.top_k(logp.astype(jnp.float32), k)  # [B, k, k]
    cum = (score[:, :, None] + lp).reshape(b, k * k)
    child = child.reshape(b, k * k)
    scores.append(cum)
    tokens.append(child)
    parent_flat.append(jnp.repeat(frontier_flat, k, axis=1))
    levels.append(jnp.full((b, k * k), i + 2, jnp.int32))
    if i + 1 < cfg.depth:
      score, sel = jax.lax.top_k(cum, k)
      token = jnp.take_along_axis(child, sel, axis=1)
      parent_slot = sel // k
      parent_hidden = jnp.take_along_axis(hidden, parent_slot[:, :, None], axis=1)
      frontier_flat = 1 + k + i * k * k + sel
      rows = jnp.take_along_axis(scratch, parent_slot[:, :, None], axis=1)  # parents' ancestry
      own = jnp.zeros((b, k, width), bool).at[:, :, (i + 1) * k:(i + 2) * k].set(jnp.eye(k, dtype=bool))
      scratch = rows | own
  scores = jnp.concatenate(scores, 1)
  tokens = jnp.concatenate(tokens, 1)
  parent_flat = jnp.concatenate(parent_flat, 1)
  levels = jnp.concatenate(levels, 1)
  # Best total_tokens-1 candidates, in candidate order: a parent's score is >= its child's and
  # its index lower (ties go to the lower index), so parents precede children.
  _, chosen = jax.lax.top_k(scores, cfg.total_tokens - 1)
  chosen = jnp.sort(chosen, axis=1)
  pf = jnp.take_along_axis(parent_flat, chosen, axis=1)
  pos = jax.vmap(jnp.searchsorted)(chosen, pf - 1) + 1
  parents = jnp.where(pf == 0, 0, pos).astype(jnp.int32)
  tree = Tree(
      tokens=jnp.concatenate([root[:, None], jnp.take_along_axis(tokens, chosen, 1)], 1).astype(jnp.int32),
      parents=jnp.concatenate([jnp.full((b, 1), -1, jnp.int32), parents], 1),
      depths=jnp.concatenate([jnp.zeros((b, 1), jnp.int32), jnp.take_along_axis(levels, chosen, 1)], 1))
  return tree, state


def _static(cfg: TreeConfig, root, root_logp, root_hidden, step, state):
  """Static tree: node tokens are the drafter's rank-r choices under their parent."""
  s = static_structure(cfg.paths)
  parents, depths, ranks, fed = s["parents"], s["depths"], s["ranks"], s["fed"]
  b, n = root.shape[0], len(parents)
  max_rank = int(ranks.max()) + 1
  width = cfg.scratch_slots
  # Top choices after each node that has children: level-1 nodes from the root's log-probs.
  _, top = jax.lax.top_k(root_logp.astype(jnp.float32), max_rank)
  tokens = jnp.zeros((b, n), jnp.int32).at[:, 0].set(root)
  level1 = np.nonzero(depths == 1)[0]
  tokens = tokens.at[:, level1].set(top[:, ranks[level1]])
  slot_of = {}  # node -> scratch slot
  offset = 0
  prev = np.zeros(1, np.int64)  # nodes fed at the previous level (root stands for level 0)
  hidden = root_hidden[:, None]
  for i, nodes in enumerate(fed):
    for j, node in enumerate(nodes):
      slot_of[int(node)] = offset + j
    parent_slot = np.array([np.nonzero(prev == parents[v])[0][0] if i else 0 for v in nodes], np.int32)
    scratch = np.zeros((len(nodes), width), bool)
    for j, v in enumerate(nodes):
      u = int(v)
      while u > 0:
        scratch[j, slot_of[u]] = True
        u = int(parents[u])
    logp, hidden, state = step(state, i, offset, tokens[:, nodes], hidden[:, parent_slot],
                               jnp.broadcast_to(scratch, (b,) + scratch.shape))
    _, top = jax.lax.top_k(logp.astype(jnp.float32), max_rank)  # [B, n_fed, R]
    children = np.nonzero(depths == i + 2)[0]
    which = np.array([np.nonzero(nodes == parents[c])[0][0] for c in children], np.int32)
    tokens = tokens.at[:, children].set(top[:, which, ranks[children]])
    prev, offset = nodes, offset + len(nodes)
  bcast = lambda a: jnp.broadcast_to(jnp.asarray(a, jnp.int32), (b, n))
  return Tree(tokens, bcast(parents), bcast(depths)), state
