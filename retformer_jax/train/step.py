"""The jitted train and eval steps, with explicit shardings over the mesh.

`train_step(state, batch, rng) -> (state, metrics)` is pure: the rng is folded with the step, so
a run resumed from a checkpoint draws the same mixup and dropout noise as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding

from retformer_jax.models import retformer
from retformer_jax.parallel import mesh as mesh_lib
from retformer_jax.train import losses
from retformer_jax.train.state import TrainState

INPUTS = ("z", "nb_image", "nb_text")


@dataclasses.dataclass(frozen=True)
class LossConfig:
  num_classes: int
  loss: str = "ce"
  lace_tau: float = 1.0
  label_smoothing: float = 0.0
  mixup_alpha: float = 0.0

  @classmethod
  def from_config(cls, train_config, num_classes: int) -> "LossConfig":
    return cls(num_classes=num_classes, loss=train_config.loss, lace_tau=train_config.lace_tau,
               label_smoothing=train_config.label_smoothing,
               mixup_alpha=train_config.mixup_alpha)


def train_step_fn(model: nn.Module, tx: optax.GradientTransformation, loss_cfg: LossConfig,
                  log_prior_c: np.ndarray | None, lr_schedule: optax.Schedule | None = None):
  """The pure update: (state, batch, rng) -> (state, metrics)."""
  if loss_cfg.loss not in losses.LOSSES:
    raise ValueError(f"config.train.loss={loss_cfg.loss!r}; use one of {losses.LOSSES}.")
  prior = None if log_prior_c is None else jnp.asarray(log_prior_c, jnp.float32)

  def step(state: TrainState, batch: dict, rng: jax.Array):
    rng = jax.random.fold_in(rng, state.step)
    mix_rng, drop_rng = jax.random.split(rng)
    inputs = tuple(batch[k].astype(jnp.float32) for k in INPUTS)
    targets = losses.smoothed_targets(batch["label"], loss_cfg.num_classes,
                                      loss_cfg.label_smoothing)
    if loss_cfg.mixup_alpha > 0:
      inputs, targets = losses.mixup(mix_rng, loss_cfg.mixup_alpha, inputs, targets)

    def loss_fn(params):
      logits = model.apply({"params": params}, *inputs, train=True, rngs={"dropout": drop_rng})
      per_ex = losses.classification_loss(logits, targets, loss=loss_cfg.loss,
                                          log_prior_c=prior, lace_tau=loss_cfg.lace_tau)
      return jnp.mean(per_ex), logits

    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
        "loss": loss,
        "accuracy": jnp.mean(jnp.argmax(logits, -1) == jnp.argmax(targets, -1)),
        "grad_norm": optax.tree.norm(grads),
        "param_norm": optax.tree.norm(params),
        "update_norm": optax.tree.norm(updates),
    }
    if lr_schedule is not None:
      metrics["lr"] = lr_schedule(state.step)
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return step


def batch_shardings(mesh: Mesh, with_mask: bool = False) -> dict[str, NamedSharding]:
  names = INPUTS + ("label",) + (("mask",) if with_mask else ())
  return {k: mesh_lib.batch_sharding(mesh) for k in names}


def jit_train_step(step_fn: Callable, mesh: Mesh, rules, state_shardings) -> Callable:
  """Jitted with explicit in/out shardings, the state donated; traced under the mesh rules."""
  repl = mesh_lib.replicated(mesh)
  jitted = jax.jit(step_fn, in_shardings=(state_shardings, batch_shardings(mesh), repl),
                   out_shardings=(state_shardings, repl), donate_argnums=0)

  def call(state, batch, rng):
    with mesh_lib.activate(mesh, rules):
      return jitted(state, batch, rng)

  call.jitted = jitted
  return call


def jit_eval_step(model: nn.Module, mesh: Mesh, rules, param_shardings, topk: int = 5):
  """(params, batch) -> top-k class indices [B, topk], replicated on every device."""
  repl = mesh_lib.replicated(mesh)

  def step(params, batch):
    logits = model.apply({"params": params}, *(batch[k] for k in INPUTS), train=False)
    _, top_bk = jax.lax.top_k(logits, topk)
    return top_bk

  jitted = jax.jit(step, in_shardings=(param_shardings, batch_shardings(mesh, with_mask=True)),
                   out_shardings=repl)

  def call(params, batch):
    with mesh_lib.activate(mesh, rules):
      return jitted(params, batch)

  return call


def jit_explain_step(model: nn.Module, mesh: Mesh, rules, param_shardings, topk: int = 1):
  """(params, batch) -> (top-k classes [B, topk], query attention [B, k + 1]), replicated."""
  repl = mesh_lib.replicated(mesh)

  def step(params, batch):
    logits, inter = model.apply({"params": params}, *(batch[k] for k in INPUTS), train=False,
                                mutable=["intermediates"])
    return jax.lax.top_k(logits, topk)[1], retformer.query_attention(inter["intermediates"])

  jitted = jax.jit(step, in_shardings=(param_shardings, batch_shardings(mesh, with_mask=True)),
                   out_shardings=(repl, repl))

  def call(params, batch):
    with mesh_lib.activate(mesh, rules):
      return jitted(params, batch)

  return call
