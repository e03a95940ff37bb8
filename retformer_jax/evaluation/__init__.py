"""RetFormer evaluation: predictions over a split, accuracy by shot bucket, plots."""
