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
  """(node, [(local name, project module)]) for every import statement; a `from` import of a
  name that is not a module counts as importing its package (the local name is then None)."""
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      yield node, [(a.asname or a.name.split(".")[0], a.name) for a in node.names
                   if a.name in mods]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        parts = _package(name, path).split(".")
        base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
      pairs = [(a.asname or a.name, f"{base}.{a.name}") if f"{base}.{a.name}" in mods
               else (None, base) for a in node.names]
      yield node, [(local, t) for local, t in pairs if t in mods]


def violations(parsed, check) -> list[str]:
  """'path:line: what' for every (node, what) that `check(module, tree)` yields."""
  mods, trees = parsed
  return sorted(f"{mods[m]}:{node.lineno}: {what}" for m, tree in trees.items()
                for node, what in check(m, tree))


@pytest.fixture(scope="module")
def parsed():
  mods = modules()
  return mods, {m: ast.parse(open(p, encoding="utf-8").read(), p) for m, p in mods.items()}


def test_no_import_cycle(parsed):
  mods, trees = parsed
  edges = {m: set() for m in mods}
  for m, tree in trees.items():
    for _, pairs in imports(tree, m, mods[m], mods):
      edges[m].update(t for _, t in pairs if t != m)
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
  def check(m, tree):
    for fn in ast.walk(tree):
      if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
        for node in ast.walk(fn):
          if isinstance(node, ast.Import):
            roots = [a.name.split(".")[0] for a in node.names]
          elif isinstance(node, ast.ImportFrom):
            roots = ["<relative>"] if node.level else [(node.module or "").split(".")[0]]
          else:
            continue
          if any(r not in LAZY_OK for r in roots):
            yield node, ast.unparse(node)

  bad = violations(parsed, check)
  assert not bad, "function-local imports (move them to the top):\n" + "\n".join(bad)


def test_no_private_name_across_modules(parsed):
  mods = parsed[0]

  def check(m, tree):
    bound = set()  # local names bound to project modules
    for node, pairs in imports(tree, m, mods[m], mods):
      bound.update(local for local, _ in pairs if local)
      if isinstance(node, ast.ImportFrom) and node.module != "__future__":
        yield from ((node, f"imports {a.name}") for a in node.names if a.name.startswith("_"))
    for node in ast.walk(tree):
      if (isinstance(node, ast.Attribute) and node.attr.startswith("_")
          and not node.attr.startswith("__") and isinstance(node.value, ast.Name)
          and node.value.id in bound):
        yield node, f"{node.value.id}.{node.attr}"

  bad = violations(parsed, check)
  assert not bad, "private names used across modules:\n" + "\n".join(bad)


def test_library_imports_no_app_or_project(parsed):
  mods = parsed[0]

  def check(m, tree):
    if m.startswith("vispec_jax"):
      for node, pairs in imports(tree, m, mods[m], mods):
        yield from ((node, t) for _, t in pairs if not t.startswith("vispec_jax"))

  bad = violations(parsed, check)
  assert not bad, "the library imports an app or a project:\n" + "\n".join(bad)
