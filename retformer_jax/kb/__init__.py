"""Knowledge base: embedding stores, ANN indexes and per-query neighbours (see `kb.api`)."""
