"""Declarative weight import: a list of rules from our parameter paths to HF tensor names.

Each rule is a regex over the '/'-joined Flax path, the HF name it comes from (regex groups as
`{1}`, `{2}`; `{layer}` for a layer axis stacked by `nn.scan`), and a small pure hook that turns
the HF tensor into ours (and back, for export). Importing fails, naming every offending tensor,
if a parameter has no source, a source tensor is missing, a tensor has the wrong shape, or the
checkpoint holds tensors nothing consumed.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from flax import traverse_util

from retformer_jax import errors

Shape = tuple[int, ...]


class WeightImportError(errors.UserError, ValueError):
  pass


# ----------------------------------------------------------------------------- hooks
@dataclasses.dataclass(frozen=True)
class Hook:
  """HF tensor <-> our tensor. `to_ours(x, our_shape)`, `to_hf(y, hf_shape)`."""

  def to_ours(self, x: np.ndarray, shape: Shape) -> np.ndarray:
    return x.reshape(shape)

  def to_hf(self, y: np.ndarray, hf_shape: Shape) -> np.ndarray:
    return y.reshape(hf_shape)

  def hf_shape(self, shape: Shape) -> Shape:
    """The HF tensor shape for one of our (per-layer) shapes."""
    return shape


IDENTITY = Hook()


@dataclasses.dataclass(frozen=True)
class Reshape(Hook):
  """Same data, other shape: e.g. a bias [H*Dh] -> [H, Dh]."""

  def hf_shape(self, shape: Shape) -> Shape:
    return (math.prod(shape),)


@dataclasses.dataclass(frozen=True)
class Linear(Hook):
  """torch Linear weight [out, in] -> our kernel [*in_dims, *out_dims] (first n_in dims are in)."""

  n_in: int = 1

  def to_ours(self, x, shape):
    return np.asarray(x).T.reshape(shape)

  def to_hf(self, y, hf_shape):
    return np.asarray(y).reshape(hf_shape[1], hf_shape[0]).T

  def hf_shape(self, shape):
    return (math.prod(shape[self.n_in:]), math.prod(shape[:self.n_in]))


@dataclasses.dataclass(frozen=True)
class Conv(Hook):
  """torch Conv weight [out, in, *spatial] -> our kernel [*spatial, in, out]."""

  def to_ours(self, x, shape):
    x = np.asarray(x)
    perm = tuple(range(2, x.ndim)) + (1, 0)
    return x.transpose(perm).reshape(shape)

  def to_hf(self, y, hf_shape):
    y = np.asarray(y).reshape(tuple(hf_shape[2:]) + (hf_shape[1], hf_shape[0]))
    n = y.ndim
    return y.transpose((n - 1, n - 2) + tuple(range(n - 2)))

  def hf_shape(self, shape):
    return (shape[-1], shape[-2]) + tuple(shape[:-2])


# ----------------------------------------------------------------------------- rules
@dataclasses.dataclass(frozen=True)
class Rule:
  target: str  # regex, full match on the '/'-joined parameter path
  source: str  # HF name; '{1}'.. = regex groups, '{layer}' = stacked layer index
  hook: Hook = IDENTITY

  def match(self, path: str) -> re.Match | None:
    return re.fullmatch(self.target, path)

  def source_names(self, m: re.Match, shape: Shape) -> tuple[list[str], bool]:
    """HF names for this parameter; True if stacked over a leading layer axis."""
    groups = {str(i): g for i, g in enumerate(m.groups(), start=1)}
    if "{layer}" in self.source:
      return [self.source.format(layer=i, **_digits(groups)) for i in range(shape[0])], True
    return [self.source.format(**_digits(groups))], False


def _digits(groups: Mapping[str, str]) -> dict[str, str]:
  # str.format cannot take keyword names that are digits; map '{1}' via positional-ish keys.
  return {f"g{k}": v for k, v in groups.items()}


def _normalise(source: str) -> str:
  return re.sub(r"\{(\d+)\}", r"{g\1}", source)


def rules(*specs: tuple) -> tuple[Rule, ...]:
  """Builds rules from (target, source[, hook]) tuples."""
  out = []
  for spec in specs:
    target, source, *hook = spec
    out.append(Rule(target, _normalise(source), hook[0] if hook else IDENTITY))
  return tuple(out)


def _find_rule(path: str, table: Sequence[Rule]) -> tuple[Rule, re.Match] | None:
  for rule in table:
    m = rule.match(path)
    if m:
      return rule, m
  return None


def _flat(tree) -> dict[str, Any]:
  return {"/".join(k): v for k, v in traverse_util.flatten_dict(tree).items()}


def load_params(abstract_params, table: Sequence[Rule], reader,
                ignore: Sequence[str] = (), what: str = "checkpoint") -> dict:
  """Fills `abstract_params` (a pytree of ShapeDtypeStruct, e.g. from `jax.eval_shape`) from
  `reader` (anything with keys()/shape()/get()), following `table`. Returns NumPy arrays."""
  flat = _flat(abstract_params)
  out: dict[tuple[str, ...], np.ndarray] = {}
  no_rule, missing, misshaped, used = [], [], [], set()
  for path, leaf in flat.items():
    found = _find_rule(path, table)
    if found is None:
      no_rule.append(path)
      continue
    rule, m = found
    shape = tuple(leaf.shape)
    names, stacked = rule.source_names(m, shape)
    per_shape = shape[1:] if stacked else shape
    parts = []
    for name in names:
      if name not in reader:
        missing.append(f"{name} (for {path})")
        continue
      used.add(name)
      want = rule.hook.hf_shape(per_shape)
      got = tuple(reader.shape(name))
      if math.prod(got) != math.prod(want) or (len(got) == len(want) and got != want):
        misshaped.append(f"{name}: checkpoint has {list(got)}, model expects {list(want)} "
                         f"(for {path})")
        continue
      parts.append(rule.hook.to_ours(np.asarray(reader.get(name)), per_shape))
    if len(parts) == len(names):
      arr = np.stack(parts) if stacked else parts[0]
      out[tuple(path.split("/"))] = arr.astype(leaf.dtype)
  unexpected = [k for k in reader.keys()
                if k not in used and not any(re.fullmatch(p, k) for p in ignore)]
  errors = []
  for title, items in (("tensors missing from the " + what, missing),
                       ("tensors with the wrong shape", misshaped),
                       (f"unexpected tensors in the {what} (not used by the model)", unexpected),
                       ("model parameters with no mapping rule", no_rule)):
    if items:
      shown = "\n    ".join(items[:25])
      more = f"\n    ... and {len(items) - 25} more" if len(items) > 25 else ""
      errors.append(f"  {len(items)} {title}:\n    {shown}{more}")
  if errors:
    raise WeightImportError(
        f"Cannot import weights from {what}:\n" + "\n".join(errors) +
        "\nCheck that config.json matches the weights and that the folder holds this model type.")
  return traverse_util.unflatten_dict(out)


def export_params(params, table: Sequence[Rule]) -> dict[str, np.ndarray]:
  """Our params -> {HF name: tensor}, the inverse of `load_params`."""
  out = {}
  for path, leaf in _flat(params).items():
    found = _find_rule(path, table)
    if found is None:
      raise WeightImportError(f"No mapping rule for parameter {path}.")
    rule, m = found
    leaf = np.asarray(jax.device_get(leaf))
    names, stacked = rule.source_names(m, leaf.shape)
    per = list(leaf) if stacked else [leaf]
    for name, y in zip(names, per):
      # np.array(order='C'), not ascontiguousarray, which turns 0-d tensors into 1-d.
      out[name] = np.array(rule.hook.to_hf(y, rule.hook.hf_shape(y.shape)), order="C")
  return out


def count_params(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))

