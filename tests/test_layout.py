"""The layout's rules, read from the code's imports (issue 18): no import cycle between the
project's modules, no function-local import except of an optional or slow-to-import package, no
`_private` name used across modules, and the library never imports the apps or the projects."""

import ast
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("vispec_jax", "train", "infer", "configs", "proj")
# Imported inside functions on purpose: absent on some machines (torch is a test extra; the GPU
# machine has no grain, TFDS or ml_collections, and the inference path must import without them)
# or slow to import and needed only to load a tokenizer or processor (transformers, tokenizers,
# jinja2).
LAZY_OK = {"torch", "tensorflow_datasets", "grain", "ml_collections", "transformers",
           "tokenizers", "jinja2"}


def modules() -> dict[str, str]:
  """Dotted module name -> path, for every module of the project's packages."""
  out = {}
  for pkg in PACKAGES:
    for folder, _, files in os.walk(os.path.join(ROOT, pkg)):
      for f in files:
        if f.endswith(".py"):
          rel = os.path.relpath(os.path.join(folder, f), ROOT)[:-3].replace(os.sep, ".")
          out[rel.removesuffix(".__init__")] = os.path.join(folder, f)
  return out


def _package(name: str, path: str) -> str:
  return name if path.endswith("__init__.py") else name.rpartition(".")[0]


def imports(tree: ast.AST, name: str, path: str, mods: dict):
  """(node, [imported project modules]) for every import statement."""
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      yield node, [a.name for a in node.names if a.name in mods]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        parts = _package(name, path).split(".")
        base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
      targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
      yield node, [t for t in targets if t in mods]


@pytest.fixture(scope="module")
def parsed():
  mods = modules()
  return mods, {m: ast.parse(open(p, encoding="utf-8").read(), p) for m, p in mods.items()}


def test_no_import_cycle(parsed):
  mods, trees = parsed
  edges = {m: set() for m in mods}
  for m, tree in trees.items():
    for _, targets in imports(tree, m, mods[m], mods):
      edges[m].update(t for t in targets if t != m)
  cycles, state = [], {}

  def visit(m, stack):
    state[m] = "open"
    stack.append(m)
    for t in sorted(edges[m]):
      if state.get(t) == "open":
        cycles.append(stack[stack.index(t):] + [t])
      elif t not in state:
        visit(t, stack)
    stack.pop()
    state[m] = "done"

  sys.setrecursionlimit(10_000)
  for m in sorted(mods):
    if m not in state:
      visit(m, [])
  assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_function_local_imports_only_for_optional_packages(parsed):
  mods, trees = parsed
  bad = []
  for m, tree in trees.items():
    for fn in ast.walk(tree):
      if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
        continue
      for node in ast.walk(fn):
        if isinstance(node, ast.Import):
          roots = [a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
          roots = [(node.module or "").split(".")[0]]
        else:
          roots = ["<relative>"] if isinstance(node, ast.ImportFrom) else []
        if any(r not in LAZY_OK for r in roots):
          bad.append(f"{mods[m]}:{node.lineno}: {ast.unparse(node)}")
  assert not bad, "function-local imports (move them to the top):\n" + "\n".join(sorted(bad))


def test_no_private_name_across_modules(parsed):
  mods, trees = parsed
  bad = []
  for m, tree in trees.items():
    bound = set()  # local names bound to project modules
    for node, targets in imports(tree, m, mods[m], mods):
      if isinstance(node, ast.ImportFrom):
        for a in node.names:
          if a.name.startswith("_") and node.module != "__future__":
            bad.append(f"{mods[m]}:{node.lineno}: imports {a.name}")
          full = f"{targets[0] if targets else ''}"
          if full.endswith("." + a.name) or full == a.name:
            bound.add(a.asname or a.name)
      else:
        bound.update(a.asname or a.name.split(".")[0] for a in node.names if a.name in mods)
    for node in ast.walk(tree):
      if (isinstance(node, ast.Attribute) and node.attr.startswith("_")
          and not node.attr.startswith("__") and isinstance(node.value, ast.Name)
          and node.value.id in bound):
        bad.append(f"{mods[m]}:{node.lineno}: {node.value.id}.{node.attr}")
  assert not bad, "private names used across modules:\n" + "\n".join(sorted(bad))


def test_library_imports_no_app_or_project(parsed):
  mods, trees = parsed
  bad = []
  for m, tree in trees.items():
    if not m.startswith("vispec_jax"):
      continue
    for node, targets in imports(tree, m, mods[m], mods):
      bad += [f"{mods[m]}:{node.lineno}: {t}" for t in targets if not t.startswith("vispec_jax")]
  assert not bad, "the library imports an app or a project:\n" + "\n".join(bad)
