"""Stage registry: the pipeline steps `main` can run, looked up by name.

Stages are imported lazily so that running `zeroshot` never imports the training stack and a
typo in `config.stages` fails before any work starts.
"""

from __future__ import annotations

import importlib
from typing import Protocol

import ml_collections

from retformer_jax import errors


class Stage(Protocol):
  def __call__(self, config: ml_collections.ConfigDict, workdir: str) -> None: ...


# name -> "module:function". Order here is the canonical pipeline order.
STAGES: dict[str, str] = {
    "zeroshot": "retformer_jax.stages.zeroshot:run",
    "embed": "retformer_jax.stages.embed:run",
    "index": "retformer_jax.stages.index:run",
    "neighbors": "retformer_jax.stages.neighbors:run",
    "train": "retformer_jax.stages.train:run",
    "eval": "retformer_jax.stages.evaluate:run",
    "retllm": "retformer_jax.stages.retllm:run",
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
  module_name, fn_name = STAGES[name].split(":")
  module = importlib.import_module(module_name)
  return getattr(module, fn_name)
