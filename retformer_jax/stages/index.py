"""Stage `index`: the ANN index of config.kb.name over its sources' image vectors.

Only segments whose store or settings changed are (re)built, so adding a source to
config.kb.sources indexes just that source. See retformer_jax/kb/index.py.
"""

from __future__ import annotations

import logging

from retformer_jax.kb import index
from retformer_jax.parallel import hosts

log = logging.getLogger(__name__)


def run(config, workdir: str) -> None:
  if index.is_current(workdir, config):
    log.info("index of KB %s is up to date, skipping", config.kb.name)
    return
  hosts.barrier("index-start")
  manifest = index.build(workdir, config)
  if manifest is not None:
    log.info("index of KB %s: %d vectors in %d segment(s), backend %s", config.kb.name,
             manifest["count"], len(manifest["segments"]), manifest["backend"])
