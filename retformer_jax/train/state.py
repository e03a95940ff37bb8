"""Train state, optimizer and sharded creation: parameters are born on their devices.

`jax.eval_shape(init)` gives the boxed (logically annotated) state without memory;
`nn.get_partition_spec` + the config's axis rules turn it into NamedShardings; `init` is then
jitted with those out_shardings, so no host ever holds the full state.
"""

from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from retformer_jax.parallel import mesh as mesh_lib


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


def schedule(train_config, steps_per_epoch: int) -> optax.Schedule:
  """Linear warmup for warmup_epochs, then cosine decay to 0 at the end of training."""
  total = max(int(train_config.epochs * steps_per_epoch), 1)
  warmup = min(int(round(train_config.warmup_epochs * steps_per_epoch)), total - 1)
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=train_config.lr, warmup_steps=warmup, decay_steps=total,
      end_value=0.0)


def optimizer(train_config, steps_per_epoch: int) -> optax.GradientTransformation:
  """AdamW (no decay on biases and LayerNorm) after global-norm clipping."""
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
  parts = []
  if train_config.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(train_config.grad_clip))
  parts.append(optax.adamw(schedule(train_config, steps_per_epoch), b1=0.9, b2=0.999,
                           weight_decay=train_config.weight_decay, mask=decay_mask))
  return optax.chain(*parts)


def _init_params(model: nn.Module, rng, example: dict):
  x = {k: jnp.zeros(v.shape, v.dtype) for k, v in example.items()}
  return model.init(rng, x["z"], x["nb_image"], x["nb_text"], train=False)["params"]


def _init_fn(model: nn.Module, tx, example: dict):
  def init(rng):
    params = _init_params(model, rng, example)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
  return init


def example_inputs(batch: int, k: int, dim: int) -> dict:
  shape = lambda *s: jax.ShapeDtypeStruct(s, jnp.float32)
  return {"z": shape(batch, dim), "nb_image": shape(batch, k, dim),
          "nb_text": shape(batch, k, dim)}


def state_shardings(model, tx, example, mesh: Mesh, rules) -> Any:
  """NamedShardings of the (unboxed) train state, from the parameters' logical axis names."""
  with nn.logical_axis_rules(rules):
    abstract = jax.eval_shape(_init_fn(model, tx, example), jax.random.key(0))
    return nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract), mesh, rules)


def abstract_state(model, tx, example, mesh: Mesh, rules) -> Any:
  """ShapeDtypeStructs with shardings: the restore target for a checkpoint on this mesh."""
  shardings = state_shardings(model, tx, example, mesh, rules)
  with nn.logical_axis_rules(rules):
    abstract = nn.unbox(jax.eval_shape(_init_fn(model, tx, example), jax.random.key(0)))
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, shardings)


def create(model, tx, example, mesh: Mesh, rules, seed: int) -> TrainState:
  """The initial state, created directly in its shardings."""
  shardings = state_shardings(model, tx, example, mesh, rules)
  init = _init_fn(model, tx, example)
  with mesh_lib.activate(mesh, rules):
    return jax.jit(lambda rng: nn.unbox(init(rng)), out_shardings=shardings)(
        jax.random.key(seed))


def param_shardings(model, example, mesh: Mesh, rules) -> Any:
  """NamedShardings of the parameters alone (evaluation, `load_params` targets)."""
  init = lambda rng: _init_params(model, rng, example)
  with nn.logical_axis_rules(rules):
    abstract = jax.eval_shape(init, jax.random.key(0))
    shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract), mesh, rules)
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      nn.unbox(abstract), shardings)
