"""Stage `embed`: every query split and every KB source becomes an embedding store.

Stores already built from the same inputs are skipped; a partial one resumes; clip-retrieval
sources are imported without re-embedding. See retformer_jax/kb/embed.py.
"""

from __future__ import annotations

import logging

from retformer_jax.kb import embed, encoder as encoder_lib, layout, source_spec, sources
from retformer_jax.parallel import hosts

log = logging.getLogger(__name__)


def planned_sources(config) -> list[source_spec.SourceSpec]:
  """Query splits first (training split, eval splits), then the KB's sources, no repeats."""
  specs, seen = [], set()
  for spec in [source_spec.query_source(config, s) for s in source_spec.query_splits(config)] + \
      source_spec.kb_sources(config):
    if spec.name not in seen:
      seen.add(spec.name)
      specs.append(spec)
  return specs


def run(config, workdir: str) -> None:
  specs = planned_sources(config)
  encoder = None
  for spec in specs:
    source = sources.open_source(spec, config)
    folder = layout.store_dir(workdir, spec.name)
    if spec.kind == "clipret":
      embed.import_precomputed(source, folder, config.kb.precomputed_encoder,
                               shard_size=config.embed.shard_size, progress=config.embed.progress)
      continue
    if encoder is None:
      encoder_lib.ensure_demo_clip(config, workdir)
      hosts.barrier("embed-demo-clip")
      encoder = encoder_lib.load_encoder(config, workdir)
    embed.embed_images(source, folder, encoder, shard_size=config.embed.shard_size,
                       num_workers=config.data.num_workers,
                       prefetch_batches=config.embed.prefetch_batches,
                       progress=config.embed.progress)
  log.info("embedding stores ready: %s", [s.name for s in specs])
