"""Everything a RetFormer training run is built from, made in one place.

`make` returns the mesh and axis rules, the model, the optimizer, the state's shardings and the
jitted train step: the training loop, the evaluator, the tests and the benchmark all start here,
so there is one way to set a run up.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding

from retformer_jax.models import retformer
from retformer_jax.parallel import mesh as mesh_lib
from retformer_jax.train import losses
from retformer_jax.train import state as state_lib
from retformer_jax.train import step as step_lib


@dataclasses.dataclass(frozen=True)
class TrainSetup:
  mesh: Mesh
  rules: tuple
  model: retformer.RetFormer
  tx: optax.GradientTransformation
  example: dict  # ShapeDtypeStructs of one global batch: z, nb_image, nb_text
  state_shardings: Any  # NamedShardings of the TrainState
  step: Callable  # jitted (state, batch, rng) -> (state, metrics), state donated
  batch_sharding: NamedSharding
  steps_per_epoch: int
  total_steps: int

  def init_state(self, seed: int) -> state_lib.TrainState:
    """The initial state, born in its shardings."""
    return state_lib.create(self.model, self.tx, self.example, self.mesh, self.rules, seed)

  def abstract_state(self):
    """ShapeDtypeStructs with shardings: the restore target for a checkpoint."""
    return state_lib.abstract_state(self.model, self.tx, self.example, self.mesh, self.rules)

  def eval_step(self, topk: int) -> Callable:
    """Jitted (params, batch with mask) -> top-k classes, on this run's mesh."""
    return step_lib.jit_eval_step(self.model, self.mesh, self.rules,
                                  self.state_shardings.params, topk=topk)


def make(config, *, num_classes: int, k: int, dim: int, steps_per_epoch: int,
         train_counts: np.ndarray | None = None, mesh: Mesh | None = None) -> TrainSetup:
  """The setup of a run of `config` on `steps_per_epoch` batches of config.train.batch_size.

  train_counts (images per class) gives LACE its prior; the mesh defaults to config.mesh.
  """
  mesh = mesh_lib.make_mesh(config.mesh) if mesh is None else mesh
  rules = mesh_lib.axis_rules(config.mesh)
  model = retformer.build(config.model, num_classes)
  tx = state_lib.optimizer(config.train, steps_per_epoch)
  example = state_lib.example_inputs(config.train.batch_size, k, dim)
  shardings = state_lib.state_shardings(model, tx, example, mesh, rules)
  if config.train.loss == "lace":
    if train_counts is None:
      raise ValueError("config.train.loss='lace' needs the training split's class counts.")
    log_prior = losses.log_prior(train_counts)
  else:
    log_prior = None
  step_fn = step_lib.train_step_fn(
      model, tx, step_lib.LossConfig.from_config(config.train, num_classes), log_prior,
      state_lib.schedule(config.train, steps_per_epoch))
  return TrainSetup(
      mesh=mesh, rules=rules, model=model, tx=tx, example=example, state_shardings=shardings,
      step=step_lib.jit_train_step(step_fn, mesh, rules, shardings),
      batch_sharding=mesh_lib.batch_sharding(mesh), steps_per_epoch=steps_per_epoch,
      total_steps=int(config.train.epochs * steps_per_epoch))
