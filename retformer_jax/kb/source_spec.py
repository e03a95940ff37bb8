"""The grammar of KB source specs (entries of config.kb.sources) and the query splits.

A source spec is one of
  "downstream"                 the training split of config.data ("<data.name>:<train_split>")
  "<dataset>:<split>"          a split of a labelled data set (data/registry.py)
  "[name=]tfds:<name>[/<config>][:<version>]:<split>"
                               any prepared TFDS set read without TensorFlow, either
                               image-classification (Image `image` + ClassLabel `label`; text =
                               the class prompt with the readable class name,
                               data/lt_lists.readable) or, without a ClassLabel `label`,
                               image-caption (Image `image` + `captions` / `caption`, as
                               coco_captions; label -1, text = the first caption; an image
                               without one is skipped or refused per
                               config.embed.missing_caption). <version> is X.Y.Z (default: the
                               newest prepared); e.g. "tfds:food101:train",
                               "tfds:cifar10_corrupted/fog_5:1.0.0:test",
                               "tfds:coco_captions/2014:test".
                               Default store name: the entry with "/" written "+".
  "[name=]wds:<dir>"           webdataset / img2dataset tar shards (KEY.jpg + KEY.txt [+ KEY.json])
  "[name=]clipret:<dir>"       precomputed clip-retrieval embeddings (img_emb/ text_emb/ metadata/)

The query splits (`query_splits`) are the splits of config.data that get a query store; each
is read as the labelled source "<data.name>:<split>" (`query_source`).
"""

from __future__ import annotations

import dataclasses
import os
import re

from retformer_jax import errors

KINDS = ("labelled", "tfds", "wds", "clipret")
_NAME_RE = re.compile(r"^[A-Za-z0-9_.:+-]+$")
TFDS_GRAMMAR = ("'[name=]tfds:<name>[/<config>][:<version>]:<split>' (e.g. 'tfds:food101:train', "
                "'tfds:cifar10_corrupted/fog_5:1.0.0:test')")
_TFDS_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*(/[A-Za-z0-9_.+-]+)?$")
_TFDS_VERSION_RE = re.compile(r"^\d+\.\d+\.\d+$")
_TFDS_SPLIT_RE = re.compile(r"^[A-Za-z0-9_-]+$")


class SourceSpecError(errors.UserError, ValueError):
  pass


@dataclasses.dataclass(frozen=True)
class SourceSpec:
  """A parsed entry of config.kb.sources (or a query split)."""

  name: str  # store directory name, unique within a workdir
  kind: str  # one of KINDS
  dataset: str = ""  # labelled: data set name; tfds: <name> or <name>/<config>
  split: str = ""  # labelled / tfds: split name
  version: str = ""  # tfds: X.Y.Z, "" = the newest prepared version
  path: str = ""  # wds / clipret: directory


def parse_source(spec: str, data_config) -> SourceSpec:
  """Parses one config.kb.sources entry; errors say what a valid entry looks like."""
  spec = entry = str(spec).strip()
  if spec == "downstream":
    return labelled(data_config.name, data_config.train_split)
  name = ""
  head, _, rest = spec.partition("=")
  if rest and ":" not in head:
    name, spec = head, rest
  kind, _, arg = spec.partition(":")
  if kind == "tfds":
    return _parse_tfds(entry, arg, name)
  if kind in ("wds", "clipret"):
    if not arg:
      raise SourceSpecError(f"KB source {spec!r}: give a directory, e.g. '{kind}:/data/laion'.")
    path = os.path.abspath(os.path.expanduser(arg))
    name = name or f"{'web' if kind == 'wds' else 'emb'}-{os.path.basename(path.rstrip('/'))}"
    _check_name(name, spec)
    return SourceSpec(name=name, kind=kind, path=path)
  if kind and arg and "/" not in arg:
    src = labelled(kind, arg)
    if name and name != src.name:
      raise SourceSpecError(f"KB source {spec!r}: labelled splits are always named "
                            f"'<dataset>:<split>'; drop the '{name}=' prefix.")
    return src
  raise SourceSpecError(
      f"KB source {spec!r} is not understood. Use 'downstream', '<dataset>:<split>' "
      f"(e.g. 'demo:val'), {TFDS_GRAMMAR}, '[name=]wds:<dir>' or '[name=]clipret:<dir>' in "
      "config.kb.sources.")


def _parse_tfds(entry: str, arg: str, name: str) -> SourceSpec:
  parts = arg.split(":")
  if "[" in arg or len(parts) not in (2, 3):
    why = ("split slices are not supported, name a whole split" if "[" in arg else
           "a split is missing" if len(parts) < 2 else "it has too many ':'")
    raise SourceSpecError(f"KB source {entry!r}: {why}; write TFDS sources as {TFDS_GRAMMAR}.")
  dataset, version, split = parts[0], (parts[1] if len(parts) == 3 else ""), parts[-1]
  for what, value, pattern in (("name[/config]", dataset, _TFDS_NAME_RE),
                               ("version", version or "0.0.0", _TFDS_VERSION_RE),
                               ("split", split, _TFDS_SPLIT_RE)):
    if not pattern.match(value):
      raise SourceSpecError(f"KB source {entry!r}: {value!r} is not a TFDS {what}; write TFDS "
                            f"sources as {TFDS_GRAMMAR}.")
  default = "tfds:" + ":".join(p for p in (dataset.replace("/", "+"), version, split) if p)
  name = name or default
  _check_name(name, entry)
  return SourceSpec(name=name, kind="tfds", dataset=dataset, split=split, version=version)


def labelled(dataset: str, split: str) -> SourceSpec:
  name = f"{dataset}:{split}"
  _check_name(name, name)
  return SourceSpec(name=name, kind="labelled", dataset=dataset, split=split)


def _check_name(name: str, spec: str) -> None:
  if not _NAME_RE.match(name) or name.startswith("."):
    raise SourceSpecError(f"KB source {spec!r}: store name {name!r} may only use letters, digits "
                          "and _ . : + -; set one with 'name=kind:dir'.")


def kb_sources(config) -> list[SourceSpec]:
  specs = [parse_source(s, config.data) for s in config.kb.sources]
  if not specs:
    raise SourceSpecError("config.kb.sources is empty; a KB needs at least one source, "
                          "e.g. --config.kb.sources=\"('downstream',)\".")
  names = [s.name for s in specs]
  dup = sorted({n for n in names if names.count(n) > 1})
  if dup:
    raise SourceSpecError(f"config.kb.sources names {dup} more than once; give each a "
                          "distinct 'name=' prefix.")
  return specs


def query_splits(config) -> list[str]:
  """Splits that get a query store and neighbours: the training split, the validation split
  used during training (config.train.eval_split), then config.data.eval_splits."""
  out = []
  for s in (config.data.train_split, config.train.eval_split, *config.data.eval_splits):
    if s and s not in out:
      out.append(s)
  return out


def query_source(config, split: str) -> SourceSpec:
  return labelled(config.data.name, split)
