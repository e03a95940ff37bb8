"""Readers for the three kinds of KB source, all random access so any host can read any range.

- LabelledSource: a split of a labelled data set (demo, TFDS-backed sets via data/registry.py,
  or any prepared TFDS image-classification set); text = the example's caption, or the class
  prompt when it has none. Registry data sets name their classes readably themselves; raw
  TFDS class names go through data/lt_lists.readable, the clean-up those readers use.
  It also reads prepared TFDS image-caption sets (e.g. coco_captions): label -1, text = the
  record's first caption (one text per image, as in the reference KB); an image whose caption
  list is empty or whose first caption is blank is handled like a captionless web item.
- WebDatasetSource: img2dataset / webdataset tar shards (KEY.jpg|png|webp + KEY.txt [+ KEY.json]),
  indexed once by scanning tar headers, then read by seeking to a member's bytes. An item with
  no caption (no KEY.txt or KEY.json caption, or an empty one) is never embedded with an empty
  text: `config.embed.missing_caption` = "skip" lists it like an unreadable image, "error"
  stops the job.
- PrecomputedSource: clip-retrieval embeddings (img_emb/img_emb_N.npy, text_emb/text_emb_N.npy,
  metadata/metadata_N.parquet), memory-mapped; nothing is re-embedded.

Image sources return examples {image uint8 [H,W,3], label, text, id}; an unreadable image raises
`CorruptExampleError` (a missing caption its subclass `MissingCaptionError`), which the embed job
counts and lists under its `reason` instead of stopping; `FatalExampleError` stops the job.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tarfile

import ml_collections
import numpy as np

from retformer_jax import errors
from retformer_jax.data import image_decode, lt_lists, registry
from retformer_jax.kb.source_spec import KINDS, SourceSpec, SourceSpecError

_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp")
MISSING_CAPTION = ("skip", "error")  # values of config.embed.missing_caption


class CorruptExampleError(ValueError):
  """An example that cannot be embedded; the embed job skips it and lists it under `reason`."""

  reason = "unreadable"


class MissingCaptionError(CorruptExampleError):
  """A web item or TFDS caption-set image without caption text (skipped when
  config.embed.missing_caption == "skip")."""

  reason = "missing_caption"


class FatalExampleError(ValueError):
  """An example the embed job must stop on rather than skip (inconsistent or refused input)."""


class SourceLayoutError(errors.UserError, ValueError):
  pass


def check_image(image, where: str) -> np.ndarray:
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3 or min(image.shape[:2]) < 1:
    raise CorruptExampleError(f"{where}: expected a uint8 [H, W, 3] image, got "
                              f"{image.dtype} {list(image.shape)}")
  return image


def decode_image(data: bytes, where: str) -> np.ndarray:
  """data/image_decode.decode_image, with bad bytes raised as a CorruptExampleError."""
  try:
    return image_decode.decode_image(data)
  except Exception as e:  # PIL raises many types for bad bytes; all mean "corrupt"
    raise CorruptExampleError(f"{where}: cannot decode image ({type(e).__name__}: {e})") from e


# --------------------------------------------------------------------------- labelled data sets


def _load_labelled(dataset: str, data_config):
  cfg = ml_collections.ConfigDict(data_config.to_dict())
  cfg.name = dataset
  return registry.load(cfg)


TFDS_LAYOUTS = ("an image-classification set (an Image 'image' and a ClassLabel 'label'), or an "
                "image-caption set (an Image 'image' and 'captions' / 'caption': a Sequence of "
                "dicts with a string 'text', as coco_captions, a Sequence of strings, or a string)")
CAPTION_RULE = "first"  # which of an image's captions becomes its text: the first stored one


def _tfds_split(spec: SourceSpec, data_config):
  """(random-access split, readable class names, version, caption path) of a prepared TFDS
  set: a classification set (caption path None; decided by a ClassLabel `label`, even when
  captions exist too) or else an image-caption set (no class names; labels -1)."""
  # Imported here: tensorflow_datasets is slow to import, and only tfds: sources need it.
  import tensorflow_datasets as tfds

  from retformer_jax.data import tfds_source  # imports tensorflow_datasets (see above)

  full_name = spec.dataset + (f":{spec.version}" if spec.version else "")
  ds = tfds_source.open_prepared(
      spec.dataset, data_config.tfds_data_dir, version=spec.version,
      prepare=f"tfds build {full_name} --file_format=array_record")
  if spec.split not in ds.splits():
    raise SourceSpecError(f"Source {spec.name!r}: TFDS set {spec.dataset!r} has no split "
                          f"{spec.split!r}; it has {ds.splits()}.")
  features = dict(ds.builder.info.features.items())
  has_image = isinstance(features.get("image"), tfds.features.Image)
  if has_image and isinstance(features.get("label"), tfds.features.ClassLabel):
    try:
      names = [lt_lists.readable(n) for n in ds.class_names()]
    except ValueError as e:
      raise SourceLayoutError(f"Source {spec.name!r}: {e}") from e
    labels = ds.labels(spec.split, data_config)
    return tfds_source.TfdsSplit(ds, spec.split, labels=labels), names, ds.version, None
  try:
    captions = tfds_source.caption_path(features)
  except ValueError as e:
    raise SourceLayoutError(f"Source {spec.name!r}: TFDS set {spec.dataset!r}: {e}; a TFDS "
                            f"source must be {TFDS_LAYOUTS}.") from e
  if has_image and captions:
    labels = np.full(ds.num_examples(spec.split), -1, np.int64)
    split = tfds_source.TfdsSplit(ds, spec.split, labels=labels, first_caption=captions)
    return split, [], ds.version, captions
  raise SourceLayoutError(
      f"Source {spec.name!r}: a TFDS source must be {TFDS_LAYOUTS}; {spec.dataset!r} has "
      f"{sorted(features)}. Other image-text data: write webdataset shards, use a wds: source.")


class LabelledSource:
  """A labelled split, or a TFDS image-caption split (`captions` True): see the module doc.

  `missing_caption` (config.embed.missing_caption) applies to caption sets only: an image
  without a caption raises MissingCaptionError ("skip") or FatalExampleError ("error").
  """

  def __init__(self, spec: SourceSpec, data_config, prompt: str,
               missing_caption: str = "skip"):
    if missing_caption not in MISSING_CAPTION:
      raise ValueError(f"config.embed.missing_caption={missing_caption!r}; use one of "
                       f"{MISSING_CAPTION}.")
    self.spec = spec
    self.kind = spec.kind
    self._prompt = prompt
    self.missing_caption = missing_caption
    self.captions = False
    if spec.kind == "tfds":
      self._split, self._names, version, caption_path = _tfds_split(spec, data_config)
      common = {"kind": "tfds", "dataset": spec.dataset, "version": version,
                "split": spec.split, "data_dir": data_config.tfds_data_dir,
                "count": len(self._split)}
      if caption_path:
        self.captions = True
        # Items without a caption are never embedded under either setting: same store.
        self._fingerprint = dict(common, layout="captions", caption_field="/".join(caption_path),
                                 caption_rule=CAPTION_RULE, captions="required")
        return
      names_sha = hashlib.sha256(json.dumps(self._names).encode()).hexdigest()[:16]
      self._fingerprint = dict(common, prompt=prompt, class_names_sha256=names_sha)
      return
    splits = _load_labelled(spec.dataset, data_config)
    if spec.split not in splits.splits:
      raise SourceSpecError(f"Source {spec.name!r}: data set {spec.dataset!r} has no "
                            f"split {spec.split!r}; it has {sorted(splits.splits)}.")
    self._split = splits.splits[spec.split]
    self._names = list(splits.class_names)  # already prompt text: each reader cleans its names
    data = data_config.to_dict()
    keep = {k: v for k, v in data.items()
            if k not in ("num_workers", "eval_splits", "train_split", "demo", "cache_dir")}
    keep["name"] = spec.dataset
    if spec.dataset == "demo":
      keep["demo"] = data["demo"]
    self._fingerprint = {"kind": "labelled", "data": keep, "split": spec.split,
                         "prompt": prompt, "count": len(self._split)}

  def __len__(self) -> int:
    return len(self._split)

  def fingerprint(self) -> dict:
    return self._fingerprint

  def __getitem__(self, index: int) -> dict:
    ex = self._split[index]
    where = f"{self.spec.name}[{index}]"
    label = int(ex.get("label", -1))
    text = str(ex.get("text", "") or "")
    if self.captions and not text.strip():
      why = ("the caption list is empty" if ex["num_captions"] == 0
             else "the first caption is blank")
      if self.missing_caption == "error":
        raise FatalExampleError(
            f"{where}: no caption ({why}); set --config.embed.missing_caption=skip to skip "
            "such images and list them in the store manifest.")
      raise MissingCaptionError(f"{where}: no caption ({why})")
    if not text.strip():
      if not 0 <= label < len(self._names):
        raise FatalExampleError(f"{where}: no caption and label {label} is outside the "
                                f"{len(self._names)} classes, so it has no text; the data set "
                                "is inconsistent.")
      text = self._prompt.format(name=self._names[label])
    image = ex["image"]
    if isinstance(image, (bytes, bytearray)):
      image = decode_image(bytes(image), where)
    return {"image": check_image(image, where), "label": label, "text": text,
            "id": int(ex.get("id", index))}


# --------------------------------------------------------------------------- webdataset tars


class WebDatasetSource:
  """All `*.tar` files of a directory, in sorted order; one example per key with an image."""

  kind = "wds"

  def __init__(self, spec: SourceSpec, missing_caption: str = "skip"):
    if missing_caption not in MISSING_CAPTION:
      raise ValueError(f"config.embed.missing_caption={missing_caption!r}; use one of "
                       f"{MISSING_CAPTION}.")
    self.spec = spec
    self.missing_caption = missing_caption
    if not os.path.isdir(spec.path):
      raise SourceLayoutError(f"Source {spec.name!r}: {spec.path} is not a directory of .tar "
                              "shards (webdataset / img2dataset output).")
    tars = sorted(f for f in os.listdir(spec.path) if f.endswith(".tar"))
    if not tars:
      raise SourceLayoutError(f"Source {spec.name!r}: no .tar files in {spec.path}.")
    self._tars = [os.path.join(spec.path, t) for t in tars]
    self._items: list[tuple[int, str, tuple, tuple | None, tuple | None]] = []
    for ti, path in enumerate(self._tars):
      self._items.extend(self._scan(ti, path))
    if missing_caption == "error":
      bare = [(ti, k) for ti, k, _, txt, js in self._items if txt is None and js is None]
      if bare:
        ti, key = bare[0]
        raise FatalExampleError(
            f"Source {spec.name!r}: {len(bare)} items have no KEY.txt or KEY.json (first: "
            f"{tars[ti]}:{key}); add captions, or set --config.embed.missing_caption=skip to "
            "skip such items and list them in the store manifest.")
    keys = [k for _, k, _, _, _ in self._items]
    numeric = all(k.isdigit() for k in keys) and len(set(keys)) == len(keys)
    self._ids = (np.asarray([int(k) for k in keys], np.int64) if numeric
                 else np.arange(len(keys), dtype=np.int64))
    # "captions": items without one are never embedded (both settings give the same store).
    self._fingerprint = {"kind": "wds", "path": spec.path, "count": len(self._items),
                         "tars": [(t, os.path.getsize(p)) for t, p in zip(tars, self._tars)],
                         "captions": "required"}

  @staticmethod
  def _scan(ti: int, path: str):
    members: dict[str, dict[str, tuple[int, int]]] = {}
    order: list[str] = []
    try:
      with tarfile.open(path, "r:") as tf:
        for m in tf:
          if not m.isfile():
            continue
          base = os.path.basename(m.name)
          key, _, ext = base.partition(".")
          key = os.path.join(os.path.dirname(m.name), key)
          if key not in members:
            members[key] = {}
            order.append(key)
          members[key][ext.lower()] = (m.offset_data, m.size)
    except tarfile.TarError as e:
      raise SourceLayoutError(f"{path}: not a readable tar file ({e}); remove or repair it.") from e
    out = []
    for key in order:
      exts = members[key]
      image = next((exts[e] for e in _IMAGE_EXTS if e in exts), None)
      if image is None:
        continue
      out.append((ti, os.path.basename(key), image, exts.get("txt"), exts.get("json")))
    return out

  def __len__(self) -> int:
    return len(self._items)

  def fingerprint(self) -> dict:
    return self._fingerprint

  def _read(self, ti: int, span) -> bytes:
    with open(self._tars[ti], "rb") as f:
      f.seek(span[0])
      return f.read(span[1])

  def _caption(self, ti: int, txt_span, json_span) -> tuple[str, str]:
    """(caption, why there is none): KEY.txt first, else KEY.json's "caption"."""
    if txt_span is not None:
      text = self._read(ti, txt_span).decode("utf-8", errors="replace").strip()
      return text, "" if text else "empty KEY.txt"
    if json_span is None:
      return "", "no KEY.txt or KEY.json"
    try:
      meta = json.loads(self._read(ti, json_span))
    except ValueError as e:
      return "", f"unreadable KEY.json ({e})"
    text = str(meta.get("caption", "") or "").strip() if isinstance(meta, dict) else ""
    return text, "" if text else "no caption in KEY.json"

  def __getitem__(self, index: int) -> dict:
    ti, key, image_span, txt_span, json_span = self._items[index]
    where = f"{os.path.basename(self._tars[ti])}:{key}"
    text, why = self._caption(ti, txt_span, json_span)
    if not text:
      if self.missing_caption == "error":
        raise FatalExampleError(
            f"{where}: no caption ({why}); add one, or set --config.embed.missing_caption=skip "
            "to skip such items and list them in the store manifest.")
      raise MissingCaptionError(f"{where}: no caption ({why})")
    image = decode_image(self._read(ti, image_span), where)
    return {"image": check_image(image, where), "label": -1, "text": text,
            "id": int(self._ids[index])}


# --------------------------------------------------------------------------- clip-retrieval


def _numbered(folder: str, prefix: str, ext: str) -> list[str]:
  if not os.path.isdir(folder):
    return []
  pat = re.compile(rf"^{prefix}_(\d+)\.{ext}$")
  found = sorted((int(m.group(1)), f) for f in os.listdir(folder) if (m := pat.match(f)))
  return [os.path.join(folder, f) for _, f in found]


class PrecomputedSource:
  """clip-retrieval output: rows are the concatenation of img_emb_0, img_emb_1, ... in order."""

  kind = "clipret"

  def __init__(self, spec: SourceSpec):
    self.spec = spec
    img = _numbered(os.path.join(spec.path, "img_emb"), "img_emb", "npy")
    txt = _numbered(os.path.join(spec.path, "text_emb"), "text_emb", "npy")
    meta = _numbered(os.path.join(spec.path, "metadata"), "metadata", "parquet")
    if not img:
      raise SourceLayoutError(f"Source {spec.name!r}: no img_emb/img_emb_N.npy under {spec.path} "
                              "(expected the clip-retrieval layout: img_emb/, text_emb/, "
                              "metadata/).")
    names = lambda ps: [os.path.basename(p).split("_")[-1] for p in ps]  # noqa: E731
    for what, other in (("text_emb", txt), ("metadata", meta)):
      if other and names(other) != [n.replace(".npy", os.path.splitext(other[0])[1])
                                    for n in names(img)]:
        raise SourceLayoutError(f"Source {spec.name!r}: {what}/ files do not pair one-to-one "
                                f"with img_emb/ files under {spec.path}.")
    self._img = [np.load(p, mmap_mode="r") for p in img]
    self._txt = [np.load(p, mmap_mode="r") for p in txt] if txt else None
    self._meta_paths = meta
    self._meta_cache: dict[int, list[str]] = {}
    counts = [a.shape[0] for a in self._img]
    dims = {a.shape[1] for a in self._img}
    if len(dims) != 1 or (self._txt and any(t.shape != i.shape for t, i in zip(self._txt,
                                                                               self._img))):
      raise SourceLayoutError(f"Source {spec.name!r}: embedding files disagree on shape "
                              "(all img_emb and text_emb files need the same dim and row counts).")
    self.dim = dims.pop()
    self._starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    self._fingerprint = {"kind": "clipret", "path": spec.path, "count": int(self._starts[-1]),
                         "files": [(os.path.basename(p), os.path.getsize(p))
                                   for p in img + txt + meta]}

  def __len__(self) -> int:
    return int(self._starts[-1])

  def fingerprint(self) -> dict:
    return self._fingerprint

  def _captions(self, fi: int) -> list[str]:
    if fi not in self._meta_cache:
      import pyarrow.parquet as pq  # only clip-retrieval sources with metadata/ need it

      n = self._img[fi].shape[0]
      if not self._meta_paths:
        caps = [""] * n
      else:
        table = pq.read_table(self._meta_paths[fi])
        col = "caption" if "caption" in table.column_names else None
        caps = ([str(c or "") for c in table.column(col).to_pylist()] if col else [""] * n)
        if len(caps) != n:
          raise SourceLayoutError(f"{self._meta_paths[fi]}: {len(caps)} rows but the matching "
                                  f"img_emb file has {n}.")
      self._meta_cache = {fi: caps}
    return self._meta_cache[fi]

  def read_rows(self, start: int, stop: int) -> dict:
    """Rows [start, stop) as float32 vectors (not yet normalised) with ids and captions."""
    img, txt, caps = [], [], []
    fi = int(np.searchsorted(self._starts, start, side="right") - 1)
    pos = start
    while pos < stop:
      a, b = pos - self._starts[fi], min(stop, self._starts[fi + 1]) - self._starts[fi]
      img.append(np.asarray(self._img[fi][a:b], np.float32))
      txt.append(np.asarray(self._txt[fi][a:b], np.float32) if self._txt is not None
                 else np.zeros((b - a, self.dim), np.float32))
      caps.extend(self._captions(fi)[a:b])
      pos = int(self._starts[fi] + b)
      fi += 1
    return {"image": np.concatenate(img), "text": np.concatenate(txt),
            "ids": np.arange(start, stop, dtype=np.int64),
            "labels": np.full(stop - start, -1, np.int64), "captions": caps}


def open_source(spec: SourceSpec, config):
  if spec.kind in ("labelled", "tfds"):
    return LabelledSource(spec, config.data, config.clip.prompt, config.embed.missing_caption)
  if spec.kind == "wds":
    return WebDatasetSource(spec, config.embed.missing_caption)
  if spec.kind == "clipret":
    return PrecomputedSource(spec)
  raise SourceSpecError(f"Unknown source kind {spec.kind!r}; use one of {KINDS}.")
