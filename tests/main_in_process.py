"""`python -m retformer_jax.main ARGS` run inside the test process, on fresh flag values.

In-process runs see what the test registered (a custom reader) and share the JAX process, so
an end-to-end run costs its stages only. Helpers for the tests of the data readers, predict and
the CLI.
"""

from __future__ import annotations

import copy
import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(monkeypatch, capsys, *args) -> tuple[int, str, str]:
  """(exit status, stdout, stderr) of main's flag parsing then `main.main` on `args`."""
  from retformer_jax import main

  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True)
  for flag in flags.FLAGS.get_flags_for_module(main.__name__):
    if flag.name != "config":
      fresh = copy.deepcopy(flag)
      fresh.unparse()
      values[flag.name] = fresh
  argv = ["retformer_jax.main", *args]
  with monkeypatch.context() as m:
    m.chdir(REPO)
    m.setattr(sys, "argv", argv)  # config overrides are read from sys.argv
    m.setattr(main, "FLAGS", values)
    try:
      main.main(main._parse_flags(argv))
      code = 0
    except SystemExit as e:
      code = e.code or 0
    except app.UsageError as e:
      sys.stderr.write(str(e))
      code = 1
  out = capsys.readouterr()
  return code, out.out, out.err


def tiny_clip(folder, words) -> str:
  """A tiny random CLIP HF folder whose tokenizer knows `words` (class names, captions)."""
  from retformer_jax.demo.clip import build_demo_clip

  corpus = [f"a photo of a {w}." for w in words] + list(words)
  return build_demo_clip(os.fspath(folder), corpus, image_size=16, width=32, layers=1)


# Overrides that make any config a seconds-long end-to-end run on a CPU.
FAST = ("--config.stages=('embed','index','neighbors','train','eval')",
        "--config.embed.progress=False", "--config.index.backend=exact",
        "--config.neighbors.k=2", "--config.train.epochs=2", "--config.train.batch_size=4",
        "--config.train.eval_every_epochs=0", "--config.eval.batch_size=8",
        "--config.clip.batch_size=8", "--config.clip.dtype=float32",
        "--config.model.dtype=float32", "--config.model.num_layers=1",
        "--config.model.num_heads=2", "--config.eval.many_above=4", "--config.eval.few_below=2",
        "--config.data.num_workers=1", "--config.eval.num_explained=2")
