"""The embed job: one source -> one embedding store, resumable and split over hosts.

A shard is a contiguous range of source indices [s * shard_size, (s + 1) * shard_size); process
p embeds the shards s with s mod P == p that are not on disk yet, each written atomically, then
process 0 joins them (store.finalize). Killing the job at any moment and rerunning it gives the
same store: finished shards are skipped, an unfinished one is redone from its start, and batches
never cross a shard boundary, so every row is computed in the same batch as before.

Decoding and preprocessing run in a thread pool a few batches ahead of the device; an example
that cannot be embedded (an unreadable image; a web item without caption under
config.embed.missing_caption = "skip") is dropped from its shard and listed in the manifest
with its reason; a `sources.FatalExampleError` stops the job (finished shards are kept).
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import logging
import os
import sys
import time

import numpy as np
from tqdm import tqdm

from retformer_jax import errors, preemption
from retformer_jax.kb import layout, sources, store
from retformer_jax.parallel import hosts

log = logging.getLogger(__name__)


class EmbedJobError(errors.UserError, ValueError):
  pass


def store_fingerprint(source_fp: dict, encoder_info: dict) -> str:
  return layout.fingerprint({"source": source_fp, "encoder": encoder_info})


def _progress(total: int, desc: str, enabled: bool):
  return tqdm(total=total, desc=desc, unit="img", smoothing=0.05, mininterval=2.0,
              disable=not enabled or total == 0, file=sys.stderr, dynamic_ncols=True)


def _prepare(store_dir: str, name: str, fp: str, num_items: int, shard_size: int) -> int:
  """Checks an existing job's inputs and returns the shard size to use (the recorded one)."""
  job_path = os.path.join(store_dir, "job.json")
  p, _ = hosts.process()
  if os.path.exists(job_path):
    job = layout.read_json(job_path)
    if job["fingerprint"] != fp:
      raise store.StoreMismatchError(
          f"{store_dir} holds a partial store of {name!r} made from other inputs (another "
          "encoder or a changed source). Delete that directory to start over, or restore the "
          "previous config to resume it.")
    return int(job["shard_size"])
  hosts.barrier(f"embed-job-read-{name}")
  if p == 0:
    layout.write_json(job_path, {"fingerprint": fp, "shard_size": shard_size,
                                 "num_items": num_items, "source": name})
  hosts.barrier(f"embed-job-written-{name}")
  return shard_size


def existing_store_is_current(store_dir: str, name: str, fp: str, family: str = "") -> bool:
  manifest = store.read_manifest(store_dir)
  if manifest is None:
    return False
  store.check_family(store.family_of(manifest), family, f"The store {store_dir} of {name!r}",
                     "the configured encoder (config.clip.path)",
                     f"delete {store_dir} to re-embed it, or use a new workdir.")
  if manifest["fingerprint"] != fp:
    enc = manifest["encoder"]
    raise store.StoreMismatchError(
        f"The store {store_dir} of {name!r} was built from other inputs (encoder "
        f"{enc.get('id')!r}, weights {enc.get('weights_sha256', '')[:12]}, or another version "
        "of the source); the current config would mix encoders. Delete that directory to re-embed it, or use "
        "a new workdir.")
  return True


def embed_images(source, store_dir: str, encoder, *, shard_size: int, num_workers: int,
                 prefetch_batches: int, progress: bool) -> dict | None:
  """Embeds an image source with `encoder`; returns the manifest (None on processes != 0)."""
  name, num_items = source.spec.name, len(source)
  fp = store_fingerprint(source.fingerprint(), encoder.info)
  family = getattr(encoder, "family", "clip")
  if existing_store_is_current(store_dir, name, fp, family):
    log.info("store %s is up to date (%s), skipping", name, fp)
    return store.read_manifest(store_dir)
  shard_size = _prepare(store_dir, name, fp, num_items, shard_size)
  num_shards = -(-num_items // shard_size)
  done = store.finished_shards(store_dir)
  todo = [s for s in hosts.mine(range(num_shards)) if s not in done]
  total = sum(min(shard_size, num_items - s * shard_size) for s in todo)
  p, _ = hosts.process()
  mine = len(hosts.mine(range(num_shards)))
  if todo and len(todo) < mine:
    log.info("store %s: resuming, %d of this process's %d shards already done", name,
             mine - len(todo), mine)
  if todo:
    encoder.preprocessor  # noqa: B018  (load the tokenizer once, before the worker threads)
  bar = _progress(total, f"embed {name} [p{p}]", progress)

  def load(i: int):
    try:
      ex = source[i]
      return i, encoder.preprocess_image(ex["image"]), ex, None
    except sources.FatalExampleError:
      raise
    except sources.CorruptExampleError as e:
      return i, None, None, (e.reason, str(e))
    except Exception as e:  # a reader failure on one item must not stop a billion-item job
      return i, None, None, (sources.CorruptExampleError.reason, f"{type(e).__name__}: {e}")

  indices = (i for s in todo for i in range(s * shard_size, min((s + 1) * shard_size, num_items)))
  window = max(1, prefetch_batches) * encoder.batch_size
  t0 = time.time()
  with cf.ThreadPoolExecutor(max(1, num_workers)) as pool:
    pending: collections.deque = collections.deque()
    feed = indices

    def top_up():
      while len(pending) < window:
        i = next(feed, None)
        if i is None:
          return
        pending.append(pool.submit(load, i))

    for s in todo:
      lo, hi = s * shard_size, min((s + 1) * shard_size, num_items)
      rows = {"image": [], "text": [], "ids": [], "labels": [], "source_index": [],
              "captions": []}
      skipped: list[dict] = []
      batch: list = []

      def flush():
        if batch:
          img, txt = encoder.encode([b[1] for b in batch], [b[2]["text"] for b in batch])
          rows["image"].append(img)
          rows["text"].append(txt)
          batch.clear()

      for _ in range(lo, hi):
        top_up()
        i, pixels, ex, err = pending.popleft().result()
        bar.update(1)
        if err is not None:
          skipped.append({"index": int(i), "reason": err[0], "error": err[1]})
          log.warning("skipping %s[%d] (%s): %s", name, i, *err)
          continue
        rows["ids"].append(ex["id"])
        rows["labels"].append(ex["label"])
        rows["source_index"].append(i)
        rows["captions"].append(ex["text"])
        batch.append((i, pixels, ex))
        if len(batch) == encoder.batch_size:
          flush()
      flush()
      d = encoder.dim or 0
      cat = lambda a: np.concatenate(a) if a else np.zeros((0, d), np.float32)  # noqa: E731
      store.write_shard(store_dir, s, store.ShardData(
          image=store.normalise_fp16(cat(rows["image"])),
          text=store.normalise_fp16(cat(rows["text"])),
          ids=np.asarray(rows["ids"], np.int64), labels=np.asarray(rows["labels"], np.int64),
          source_index=np.asarray(rows["source_index"], np.int64), captions=rows["captions"],
          skipped=skipped))
      preemption.check(f"embedding {name}, shard {s + 1} of {num_shards} (saved)")
  bar.close()
  if total:
    log.info("embedded %d items of %s in %.1fs (%.1f items/s)", total, name, time.time() - t0,
             total / max(time.time() - t0, 1e-9))
  return _join(store_dir, name, fp, source, encoder.info, num_items, shard_size, family)


def skipped_summary(skipped: list[dict]) -> str:
  """`3 unreadable, 2 missing_caption` from a manifest's skipped entries."""
  counts = collections.Counter(s.get("reason", sources.CorruptExampleError.reason)
                               for s in skipped)
  return ", ".join(f"{n} {reason}" for reason, n in sorted(counts.items()))


def _dim_of_shards(store_dir: str, num_items: int, shard_size: int) -> int:
  for s in range(-(-num_items // shard_size)):
    with np.load(store.shard_path(store_dir, s)) as z:
      if z["image"].shape[0]:
        return int(z["image"].shape[1])
  raise EmbedJobError(f"{store_dir}: every example was skipped (unreadable, or without caption); "
                      "check the source: the warnings above name each item and why.")


def _join(store_dir, name, fp, source, encoder_info, num_items, shard_size, family):
  """Process 0 joins the shards; `family` ("clip", "siglip"; "" unknown) goes in the manifest."""
  hosts.barrier(f"embed-shards-{name}")
  manifest = None
  if hosts.process()[0] == 0:
    dim = _dim_of_shards(store_dir, num_items, shard_size)
    manifest = store.finalize(store_dir, num_items=num_items, shard_size=shard_size, dim=dim,
                              meta={"source": name, "kind": source.kind, "fingerprint": fp,
                                    "source_fingerprint": source.fingerprint(),
                                    "encoder": encoder_info, "encoder_family": family})
    if os.path.exists(os.path.join(store_dir, "job.json")):
      os.unlink(os.path.join(store_dir, "job.json"))
    if manifest["skipped_count"]:
      log.warning("%s: %d items skipped: %s (listed in %s/manifest.json)", name,
                  manifest["skipped_count"], skipped_summary(manifest["skipped"]), store_dir)
  hosts.barrier(f"embed-joined-{name}")
  return manifest


def import_precomputed(source: sources.PrecomputedSource, store_dir: str, encoder_id: str, *,
                       shard_size: int, progress: bool) -> dict | None:
  """Copies clip-retrieval vectors into a store (normalised, fp16), shard by shard."""
  if not encoder_id:
    raise EmbedJobError(
        f"Source {source.spec.name!r} holds precomputed embeddings: say which encoder made them "
        "with --config.kb.precomputed_encoder=<id>, where <id> is the basename of the CLIP "
        "folder used for the queries (config.clip.path), e.g. 'CLIP-ViT-B-16-DataComp.XL-"
        "s13B-b90K'. Vectors of different encoders cannot be mixed.")
  name, num_items = source.spec.name, len(source)
  info = {"id": encoder_id, "weights_sha256": ""}
  fp = store_fingerprint(source.fingerprint(), info)
  if existing_store_is_current(store_dir, name, fp):
    return store.read_manifest(store_dir)
  shard_size = _prepare(store_dir, name, fp, num_items, shard_size)
  num_shards = -(-num_items // shard_size)
  done = store.finished_shards(store_dir)
  todo = [s for s in hosts.mine(range(num_shards)) if s not in done]
  bar = _progress(sum(min(shard_size, num_items - s * shard_size) for s in todo),
                  f"import {name}", progress)
  for s in todo:
    lo, hi = s * shard_size, min((s + 1) * shard_size, num_items)
    r = source.read_rows(lo, hi)
    store.write_shard(store_dir, s, store.ShardData(
        image=store.normalise_fp16(r["image"]), text=store.normalise_fp16(r["text"]),
        ids=r["ids"], labels=r["labels"], source_index=np.arange(lo, hi, dtype=np.int64),
        captions=r["captions"], skipped=[]))
    bar.update(hi - lo)
    preemption.check(f"importing {name}, shard {s + 1} of {num_shards} (saved)")
  bar.close()
  # The family of imported vectors is unknown (""): only the encoder id guards them.
  return _join(store_dir, name, fp, source, info, num_items, shard_size, "")
