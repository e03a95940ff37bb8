"""Data-parallel embedding: with 4 local devices the batch is split over them (weights replicated)
and the store matches the 1-device store."""

import subprocess

import numpy as np
import pytest

from retformer_jax.kb import layout, store
from test_kb_embed_resume import ROOT, command, env, reference_store


@pytest.mark.slow
def test_four_devices_match_one(tmp_path):
  ref = reference_store(tmp_path)
  wd = str(tmp_path / "four")
  out = subprocess.run(command(wd) + ["--config.clip.batch_size=12"], cwd=ROOT,
                       env=env(XLA_FLAGS="--xla_force_host_platform_device_count=4"),
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "4 local / 4 global devices" in out.stderr
  for split in ("train", "test"):
    a = store.EmbeddingStore(layout.store_dir(ref, f"demo:{split}"))
    b = store.EmbeddingStore(layout.store_dir(wd, f"demo:{split}"))
    assert a.fingerprint == b.fingerprint and a.count == b.count
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.captions(np.arange(a.count)) == b.captions(np.arange(b.count))
    for field in ("image", "text"):
      np.testing.assert_allclose(np.asarray(getattr(a, field), np.float32),
                                 np.asarray(getattr(b, field), np.float32), atol=2e-3)
