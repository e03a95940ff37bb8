"""Stage registry: the pipeline steps `main` can run, by name, in pipeline order.

Each stage is a function `run(config, workdir)` in its own module of this package; `STAGES`
maps the names used in `config.stages` straight to them.
"""

from __future__ import annotations

from typing import Callable

import ml_collections

from retformer_jax import errors
from retformer_jax.stages import embed, evaluate, index, neighbors, retllm, train, zeroshot

Stage = Callable[[ml_collections.ConfigDict, str], None]

# Order here is the canonical pipeline order.
STAGES: dict[str, Stage] = {
    "zeroshot": zeroshot.run,
    "embed": embed.run,
    "index": index.run,
    "neighbors": neighbors.run,
    "train": train.run,
    "eval": evaluate.run,
    "retllm": retllm.run,
}


class UnknownStageError(errors.UserError, ValueError):
  pass


def check_names(names) -> None:
  unknown = [n for n in names if n not in STAGES]
  if unknown:
    raise UnknownStageError(
        f"Unknown stage(s) {unknown} in config.stages; known stages, in pipeline order: "
        f"{list(STAGES)}. Fix the config or pass e.g. --config.stages=\"('embed','index')\".")


def get(name: str) -> Stage:
  check_names([name])
  return STAGES[name]
