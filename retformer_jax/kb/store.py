"""On-disk embedding store: sharded while it is written, one memory-mappable set of files after.

While embedding, each shard (a contiguous range of source indices) is one `.npz` written
atomically, so a killed job leaves whole shards or nothing; resuming skips the shards on disk.
`finalize` joins the shards, in order, into
  image.npy / text.npy      float16 [N, d], L2-normalised
  ids.npy / labels.npy      int64 [N]  (source ids; -1 = unknown label)
  source_index.npy          int64 [N]  (index in the source; rows skip corrupt examples)
  captions.bin + caption_offsets.npy   utf-8 texts, row r = bin[off[r]:off[r+1]]
  manifest.json             encoder id + weights hash, encoder_family ("clip" / "siglip"), dim,
                            dtype, count, shards, skipped items
and the manifest is written last: a store without one is unfinished.

`open_query_store` and `open_stores` open the finished stores a config names: a query split's,
and the KB sources', in config order.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil

import numpy as np

from retformer_jax import atomic_io, errors
from retformer_jax.kb import layout, source_spec

FORMAT = "retformer-store-v1"


class StoreError(errors.UserError, ValueError):
  pass


class StoreMismatchError(StoreError):
  pass


@dataclasses.dataclass
class ShardData:
  """One shard's rows (corrupt examples already dropped) and what was skipped."""

  image: np.ndarray  # float16 [n, d]
  text: np.ndarray  # float16 [n, d]
  ids: np.ndarray  # int64 [n]
  labels: np.ndarray  # int64 [n]
  source_index: np.ndarray  # int64 [n]
  captions: list[str]
  skipped: list[dict]  # {"index", "error"}


def normalise_fp16(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float32)
  norm = np.linalg.norm(x, axis=-1, keepdims=True)
  return (x / np.maximum(norm, 1e-12)).astype(np.float16)


def check_compatible(encoder_a: dict, encoder_b: dict, what_a: str, what_b: str) -> None:
  """Same encoder id, and the same weights hash whenever both sides know it."""
  ha, hb = encoder_a.get("weights_sha256", ""), encoder_b.get("weights_sha256", "")
  if encoder_a.get("id") != encoder_b.get("id") or (ha and hb and ha != hb):
    raise StoreMismatchError(
        f"{what_a} was embedded with encoder {encoder_a.get('id')!r} (weights {ha[:12] or '?'}) "
        f"but {what_b} uses {encoder_b.get('id')!r} (weights {hb[:12] or '?'}); vectors of "
        "different encoders cannot be compared. Re-embed with one encoder (delete the stale "
        "store directory and rerun the embed stage) or use a fresh workdir.")


FAMILY_NAMES = {"clip": "CLIP", "siglip": "SigLIP"}


def family_of(manifest: dict) -> str:
  """The encoder family of a store: "clip", "siglip", or "" (unknown: imported vectors). Stores
  embedded before the family was recorded are CLIP's, the only encoder then."""
  if "encoder_family" in manifest:
    return manifest["encoder_family"]
  return "" if not manifest.get("encoder", {}).get("weights_sha256") else "clip"


def check_family(family_a: str, family_b: str, what_a: str, what_b: str, fix: str) -> None:
  """Vectors of a CLIP and of a SigLIP never meet: one line naming both and the fix."""
  if family_a and family_b and family_a != family_b:
    name = lambda f: FAMILY_NAMES.get(f, f)  # noqa: E731
    raise StoreMismatchError(
        f"{what_a} holds {name(family_a)} vectors but {what_b} is {name(family_b)}; vectors "
        f"of different encoder families are never mixed: {fix}")


def shard_path(store_dir: str, shard: int) -> str:
  return os.path.join(store_dir, "shards", f"{shard:06d}.npz")


def write_shard(store_dir: str, shard: int, data: ShardData) -> None:
  blob = "\x00".join(data.captions).encode("utf-8")
  atomic_io.save_npz(shard_path(store_dir, shard), image=data.image.astype(np.float16),
                     text=data.text.astype(np.float16), ids=data.ids.astype(np.int64),
                     labels=data.labels.astype(np.int64),
                     source_index=data.source_index.astype(np.int64),
                     captions=np.frombuffer(blob, np.uint8), num_captions=len(data.captions),
                     skipped=np.frombuffer(json.dumps(data.skipped).encode(), np.uint8))


def read_shard(store_dir: str, shard: int) -> ShardData:
  with np.load(shard_path(store_dir, shard)) as z:
    n = int(z["num_captions"])
    caps = z["captions"].tobytes().decode("utf-8").split("\x00") if n else []
    return ShardData(image=z["image"], text=z["text"], ids=z["ids"], labels=z["labels"],
                     source_index=z["source_index"], captions=caps,
                     skipped=json.loads(z["skipped"].tobytes().decode()))


def finished_shards(store_dir: str) -> set[int]:
  folder = os.path.join(store_dir, "shards")
  if not os.path.isdir(folder):
    return set()
  return {int(f[:-4]) for f in os.listdir(folder) if f.endswith(".npz") and f[:-4].isdigit()}


def _sha(*arrays) -> str:
  h = hashlib.sha256()
  for a in arrays:
    h.update(np.ascontiguousarray(a).tobytes())
  return h.hexdigest()[:24]


def finalize(store_dir: str, *, num_items: int, shard_size: int, dim: int, meta: dict) -> dict:
  """Joins the shards, in order, into the final files (streaming, one shard in memory at a
  time), writes the manifest last, then drops the shards."""
  num_shards = -(-num_items // shard_size)
  missing = sorted(set(range(num_shards)) - finished_shards(store_dir))
  if missing:
    raise StoreError(f"{store_dir}: shards {missing[:10]} are missing; rerun the embed stage "
                     "(it resumes) on every process.")
  rows = []
  for s in range(num_shards):
    with np.load(shard_path(store_dir, s)) as z:
      rows.append(len(z["ids"]))
  count = int(sum(rows))
  tmpdir = atomic_io.mkdtemp(store_dir, prefix=".final-")
  outs = {n: np.lib.format.open_memmap(os.path.join(tmpdir, f"{n}.npy"), mode="w+",
                                       dtype=np.float16, shape=(count, dim))
          for n in ("image", "text")}
  ints = {n: np.lib.format.open_memmap(os.path.join(tmpdir, f"{n}.npy"), mode="w+",
                                       dtype=np.int64, shape=(count,))
          for n in ("ids", "labels", "source_index")}
  offsets, shards, skipped, pos, cpos = [0], [], [], 0, 0
  with open(os.path.join(tmpdir, "captions.bin"), "wb") as fcap:
    for s in range(num_shards):
      d = read_shard(store_dir, s)
      n = len(d.ids)
      if n:  # a shard whose every item was unreadable holds no rows
        for name, out in outs.items():
          out[pos:pos + n] = getattr(d, name)
        for name, arr in ints.items():
          arr[pos:pos + n] = getattr(d, name)
      for c in d.captions:
        b = c.encode("utf-8")
        fcap.write(b)
        cpos += len(b)
        offsets.append(cpos)
      start = s * shard_size
      shards.append({"shard": s, "start": start, "stop": min(start + shard_size, num_items),
                     "rows": n, "sha256": _sha(d.image, d.text, d.ids)})
      skipped.extend(d.skipped)
      pos += n
  for out in (*outs.values(), *ints.values()):
    out.flush()
  del outs, ints
  atomic_io.save_npy(os.path.join(tmpdir, "caption_offsets.npy"),
                     np.asarray(offsets, np.int64))
  for f in os.listdir(tmpdir):
    os.replace(os.path.join(tmpdir, f), os.path.join(store_dir, f))
  os.rmdir(tmpdir)
  manifest = dict(meta, format=FORMAT, dim=dim, dtype="float16", count=count,
                  source_count=num_items, shard_size=shard_size, shards=shards,
                  skipped_count=len(skipped), skipped=skipped)
  layout.write_json(os.path.join(store_dir, "manifest.json"), manifest)
  shutil.rmtree(os.path.join(store_dir, "shards"), ignore_errors=True)
  return manifest


def read_manifest(store_dir: str) -> dict | None:
  path = os.path.join(store_dir, "manifest.json")
  return layout.read_json(path) if os.path.exists(path) else None


class EmbeddingStore:
  """Read side of a finished store; arrays are memory-mapped, nothing is loaded eagerly."""

  def __init__(self, store_dir: str):
    self.path = store_dir
    manifest = read_manifest(store_dir)
    if manifest is None:
      raise StoreError(f"No finished embedding store at {store_dir} (manifest.json missing); "
                       "run the embed stage first (--config.stages=\"('embed',)\").")
    if manifest.get("format") != FORMAT:
      raise StoreError(f"{store_dir}: store format {manifest.get('format')!r}, expected {FORMAT}.")
    self.manifest = manifest
    load = lambda n: np.load(os.path.join(store_dir, f"{n}.npy"), mmap_mode="r")  # noqa: E731
    self.image = load("image")
    self.text = load("text")
    self.ids = np.asarray(load("ids"))
    self.labels = np.asarray(load("labels"))
    self.source_index = np.asarray(load("source_index"))
    self._offsets = np.asarray(load("caption_offsets"))
    self._captions = np.memmap(os.path.join(store_dir, "captions.bin"), np.uint8, mode="r") \
        if self._offsets[-1] > 0 else np.zeros(0, np.uint8)
    if self.image.shape != (manifest["count"], manifest["dim"]):
      raise StoreError(f"{store_dir}: image.npy has shape {self.image.shape} but the manifest "
                       f"says [{manifest['count']}, {manifest['dim']}]; the store is damaged, "
                       "delete it and rerun the embed stage.")

  @property
  def name(self) -> str:
    return self.manifest["source"]

  @property
  def encoder(self) -> dict:
    return self.manifest["encoder"]

  @property
  def encoder_family(self) -> str:
    return family_of(self.manifest)

  @property
  def count(self) -> int:
    return int(self.manifest["count"])

  @property
  def dim(self) -> int:
    return int(self.manifest["dim"])

  @property
  def fingerprint(self) -> str:
    return self.manifest["fingerprint"]

  def __len__(self) -> int:
    return self.count

  def captions(self, rows) -> list[str]:
    rows = np.asarray(rows, np.int64).reshape(-1)
    out = []
    for r in rows:
      a, b = self._offsets[r], self._offsets[r + 1]
      out.append(bytes(self._captions[a:b]).decode("utf-8"))
    return out


def open_query_store(workdir: str, config, split: str) -> EmbeddingStore:
  """The store of query split `split` of config.data ("<data.name>:<split>")."""
  return EmbeddingStore(layout.store_dir(workdir, source_spec.query_source(config, split).name))


def open_stores(workdir: str, config) -> list[EmbeddingStore]:
  """The KB's source stores, in config order, checked to share one encoder and dim."""
  stores = [EmbeddingStore(layout.store_dir(workdir, s.name))
            for s in source_spec.kb_sources(config)]
  for s in stores[1:]:
    check_family(stores[0].encoder_family, s.encoder_family, f"KB source {stores[0].name!r}",
                 f"the encoder of KB source {s.name!r}", "delete the stale store directory "
                 f"under {os.path.dirname(s.path)} and rerun the embed stage.")
    check_compatible(stores[0].encoder, s.encoder, f"KB source {stores[0].name!r}",
                     f"KB source {s.name!r}")
    if s.dim != stores[0].dim:
      raise StoreMismatchError(f"KB sources {stores[0].name!r} and {s.name!r} have "
                               f"dims {stores[0].dim} and {s.dim}.")
  return stores
