"""Every config key with its default and its one-line doc, for `main --list_keys`.

The docs are the comments of configs/common.py, read from the file itself (a comment at the end
of `c.x.y = ...`, else the comment lines right above it), so they are written once, beside the
default they describe.
"""

from __future__ import annotations

import ast
import importlib.util
import io
import os
import tokenize

COMMON = os.path.join("configs", "common.py")


def find_common(config_file: str | None = None) -> str | None:
  """configs/common.py: beside the config file, in the checkout holding this package, or under
  the working directory; None when there is none."""
  here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  candidates = [os.path.join(os.path.dirname(os.path.abspath(config_file)), "common.py")
                if config_file else None, os.path.join(here, COMMON), os.path.abspath(COMMON)]
  return next((p for p in candidates if p and os.path.isfile(p)), None)


def _dotted(node) -> str | None:
  """`c.data.root` -> "data.root" (assignments to attributes of `c` only)."""
  parts = []
  while isinstance(node, ast.Attribute):
    parts.append(node.attr)
    node = node.value
  if not (isinstance(node, ast.Name) and node.id == "c" and parts):
    return None
  return ".".join(reversed(parts))


def docs(path: str) -> dict[str, str]:
  """{dotted key: doc} for every `c.<key> = ...` in get_config of `path`, in file order."""
  source = open(path, encoding="utf-8").read()
  lines = source.splitlines()
  comments = {}  # line number -> (text, whether the line holds only the comment)
  for tok in tokenize.generate_tokens(io.StringIO(source).readline):
    if tok.type == tokenize.COMMENT:
      line = tok.start[0]
      comments[line] = (tok.string.lstrip("#").strip(), lines[line - 1].strip().startswith("#"))
  functions = [n for n in ast.parse(source).body
               if isinstance(n, ast.FunctionDef) and n.name == "get_config"]
  out: dict[str, tuple[int, str]] = {}  # key -> (line, doc)
  for node in ast.walk(functions[0]) if functions else ():
    if not (isinstance(node, ast.Assign) and len(node.targets) == 1):
      continue
    key = _dotted(node.targets[0])
    if key is None or key in out:
      continue
    trailing = [comments[n][0] for n in range(node.lineno, node.end_lineno + 1)
                if n in comments and not comments[n][1]]
    above, n = [], node.lineno - 1
    while n in comments and comments[n][1]:
      above.insert(0, comments[n][0])
      n -= 1
    out[key] = (node.lineno, " ".join(trailing or above))
  return {key: doc for key, (_, doc) in sorted(out.items(), key=lambda kv: kv[1][0])}


def load_common(path: str):
  """get_config() of the common.py at `path` (the defaults when no --config is given)."""
  spec = importlib.util.spec_from_file_location("_retformer_common_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _leaves(config, prefix: str = "") -> dict:
  out = {}
  for key, value in config.items():
    name = prefix + key
    if hasattr(value, "items"):
      out.update(_leaves(value, name + "."))
    else:
      out[name] = value
  return out


def listing(config, key_docs: dict[str, str], source: str) -> str:
  """One line per key: `key = default  # doc`; a section's doc heads its keys."""
  values = _leaves(config)
  order = [k for k in key_docs if k in values or any(v.startswith(k + ".") for v in values)]
  order += [k for k in values if k not in key_docs]
  lines = [f"Every config key, its default and what it does (declared in {source}; override "
           "any with --config.KEY=VALUE):", ""]
  for key in order:
    doc = key_docs.get(key, "")
    if key in values:
      lines.append(f"{key} = {values[key]!r}" + (f"  # {doc}" if doc else ""))
    else:
      lines += ["", f"[{key}]" + (f"  {doc}" if doc else "")]
  return "\n".join(lines) + "\n"
