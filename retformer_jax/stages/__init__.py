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


# One line per stage, for `python -m retformer_jax.main --help`.
SUMMARIES: dict[str, str] = {
    "zeroshot": "CLIP zero-shot accuracy with class-name prompts (the baseline row)",
    "embed": "query splits and KB sources -> embedding stores (WORKDIR/store/)",
    "index": "ANN index over the KB's image vectors (WORKDIR/index/)",
    "neighbors": "top-k KB neighbours of every query split (WORKDIR/neighbors/)",
    "train": "train RetFormer on the neighbours (WORKDIR/checkpoints/)",
    "eval": "top-1 / Many / Medium / Few of the trained model (WORKDIR/eval/)",
    "retllm": "RetLLM: CLIP candidates re-ranked by Qwen2.5-VL (WORKDIR/retllm/)",
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
