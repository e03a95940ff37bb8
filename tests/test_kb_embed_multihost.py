"""The embed job split over 2 real processes (gloo collectives on loopback) gives the same store,
bit for bit, as one process: each embeds its own shards, process 0 joins them."""

import socket
import subprocess

import pytest

from retformer_jax.kb import layout
from test_kb_embed_resume import (ROOT, assert_same_store, command, env,
                                         reference_store)


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_make_the_same_store_as_one(tmp_path):
  ref = reference_store(tmp_path)
  wd = str(tmp_path / "two")
  port = _free_port()
  procs = [subprocess.Popen(command(wd), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True,
                            env=env(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                                    JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i),
                                    RETFORMER_CPU_COLLECTIVES="gloo"))
           for i in range(2)]
  errs = []
  for p in procs:
    try:
      _, err = p.communicate(timeout=300)
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
    errs.append(err)
  assert all(p.returncode == 0 for p in procs), "\n".join(e[-2000:] for e in errs)
  assert "[p1]" not in errs[0]  # each process embeds (and reports) its own shards
  for split in ("train", "test"):
    assert_same_store(layout.store_dir(ref, f"demo:{split}"), layout.store_dir(wd, f"demo:{split}"))
