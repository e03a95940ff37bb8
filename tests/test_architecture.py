"""The package's imports point one way: no cycles between modules or packages, no edge from a
lower layer to a higher one, and `models/` never depends on the weight converters.

Every `import` of our own modules counts, at the top of a file or inside a function.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "retformer_jax"

# Higher layers may import lower ones (and their own layer, without a cycle); never upwards.
LAYERS = {
    "main": 4, "predict": 4, "classifier": 4,
    "stages": 3,
    "train": 2, "evaluation": 2, "kb": 2, "retllm": 2,
    "models": 1, "data": 1, "convert": 1, "demo": 1,
    "parallel": 0, "atomic_io": 0, "errors": 0, "preemption": 0, "progress": 0,
    "config_keys": 0,
}
FORBIDDEN = {("models", "convert"), ("models", "data"), ("data", "convert")}


def _module_name(path: pathlib.Path) -> str:
  parts = ("retformer_jax",) + path.relative_to(PACKAGE).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, pathlib.Path]:
  return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(path: pathlib.Path, name: str, known: set[str]) -> set[str]:
  """Our modules that `path` imports, anywhere in the file."""
  is_pkg = path.name == "__init__.py"
  out = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      targets = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        anchor = name.split(".") if is_pkg else name.split(".")[:-1]
        anchor = anchor[:len(anchor) - (node.level - 1)]
        base = ".".join(anchor + ([base] if base else []))
      targets = [f"{base}.{a.name}" for a in node.names] + [base]
    else:
      continue
    for t in targets:
      while t and t not in known:
        t = t.rpartition(".")[0]
      if t and t != name and t != "retformer_jax":
        out.add(t)
  return out


def _graph() -> dict[str, set[str]]:
  mods = _modules()
  known = set(mods)
  graph = {m: _imports(p, m, known) for m, p in mods.items()}
  # `from retformer_jax.x import y` where y is a module names y; drop the package face itself
  # when a submodule of it is what is imported.
  for m, targets in graph.items():
    graph[m] = {t for t in targets
                if not any(o != t and o.startswith(t + ".") for o in targets)
                or not (PACKAGE / pathlib.Path(*t.split(".")[1:]) / "__init__.py").exists()}
  return graph


def _package(module: str) -> str:
  return module.split(".")[1] if module.count(".") else module


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """Strongly connected components with more than one node (Tarjan)."""
  index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

  def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on.add(v)
    for w in graph.get(v, ()):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      comp = []
      while True:
        w = stack.pop()
        on.discard(w)
        comp.append(w)
        if w == v:
          break
      if len(comp) > 1:
        out.append(sorted(comp))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def test_every_package_has_a_layer():
  missing = {_package(m) for m in _modules()} - set(LAYERS) - {"retformer_jax"}
  assert not missing, f"add {missing} to LAYERS"


def test_no_module_cycles():
  graph = _graph()
  inside = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in graph.items()}
  assert _cycles(inside) == []


def test_no_package_cycles_and_no_upward_edges():
  pkg_graph: dict[str, set[str]] = {}
  upward, forbidden = [], []
  for m, targets in _graph().items():
    a = _package(m)
    for t in targets:
      b = _package(t)
      if a == b or "retformer_jax" in (a, b):
        continue
      pkg_graph.setdefault(a, set()).add(b)
      if LAYERS[a] < LAYERS[b]:
        upward.append(f"{m} -> {t}")
      if (a, b) in FORBIDDEN:
        forbidden.append(f"{m} -> {t}")
  assert upward == [], "imports from a lower layer to a higher one"
  assert forbidden == []
  assert _cycles(pkg_graph) == []


def test_the_checker_sees_function_level_imports(tmp_path, monkeypatch):
  """A planted upward import inside a function is found (the check can fail)."""
  root = tmp_path / "retformer_jax"
  (root / "models").mkdir(parents=True)
  (root / "stages").mkdir()
  for f in ("__init__.py", "models/__init__.py", "stages/__init__.py", "stages/run.py"):
    (root / f).write_text("")
  (root / "models" / "m.py").write_text("def f():\n  from retformer_jax.stages import run\n")
  monkeypatch.setattr(__import__(__name__), "PACKAGE", root)
  graph = _graph()
  assert graph["retformer_jax.models.m"] == {"retformer_jax.stages.run"}
  with pytest.raises(AssertionError):
    test_no_package_cycles_and_no_upward_edges()
