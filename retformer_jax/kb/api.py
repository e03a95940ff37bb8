"""What training, evaluation and RetLLM read from the KB stages' outputs.

    store = api.open_query_store(workdir, config, "train")  # EmbeddingStore of "<data>:<split>"
    store.image, store.text            # float16 memmaps [N, d], L2-normalised
    store.labels, store.ids            # int64 [N];  store.captions(rows) -> list[str]
    kb = api.open_kb(workdir, config)  # KnowledgeBase over config.kb.sources
    kb.image(rows), kb.text(rows), kb.labels(rows), kb.captions(rows)
    nb = api.load_neighbors(workdir, config, "train")
    nb.rows, nb.sims                   # int64 / float32 [N, k], best first

Rows of a query store follow the split's order (row i = example i; an unreadable example is
dropped and listed in store.manifest["skipped"], and store.source_index maps rows back).
Everything opened here is checked: stores of different encoders, neighbours computed against
an older index or another query store raise instead of returning mismatched vectors.

This module only gathers the readers from where they live: store.py (query stores),
knowledge_base.py (the KB), index.py (the ANN index), neighbors.py (neighbours).
"""

from __future__ import annotations

from retformer_jax.kb.index import open_index
from retformer_jax.kb.knowledge_base import open_kb
from retformer_jax.kb.neighbors import Neighbors, load_neighbors
from retformer_jax.kb.store import open_query_store

__all__ = ["open_query_store", "open_kb", "open_index", "load_neighbors", "Neighbors"]
