"""Building blocks shared by the CLIP, Qwen2.5-VL and RetFormer models.

Every parameter carries logical axis names, so one set of axis rules (`config.mesh`) shards all
three models. Checkpoints and the HuggingFace name maps depend on parameter names and shapes,
so these helpers take the names from their callers and never add a level of their own.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp


# ----------------------------------------------------------------------------- activations
def _quick_gelu(x):
  return x * jax.nn.sigmoid(1.702 * x)


def _gelu(x):
  return jax.nn.gelu(x, approximate=False)


def _tanh_gelu(x):
  return jax.nn.gelu(x, approximate=True)


# transformers' activation names (ACT2FN) that CLIP and Qwen configs use and we implement.
ACTIVATIONS: dict[str, Callable] = {
    "quick_gelu": _quick_gelu, "gelu": _gelu, "gelu_python": _gelu, "gelu_new": _tanh_gelu,
    "gelu_pytorch_tanh": _tanh_gelu, "gelu_fast": _tanh_gelu, "gelu_accurate": _tanh_gelu,
    "relu": jax.nn.relu, "silu": jax.nn.silu, "swish": jax.nn.silu, "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
}


def activation(name: str) -> Callable:
  """The activation function a config names (`hidden_act`)."""
  if name not in ACTIVATIONS:
    raise ValueError(f"Unsupported activation {name!r}; use one of {', '.join(ACTIVATIONS)}.")
  return ACTIVATIONS[name]


# ----------------------------------------------------------------------------- parameters
def param(module: nn.Module, name: str, init, shape, axes, dtype):
  """`module.param(name, ...)` whose value carries the logical axis names `axes`."""
  return module.param(name, nn.with_logical_partitioning(init, axes), shape, dtype)


class Dense(nn.Module):
  """y = x W + b contracting the last `len(axes) - len(features)` dims of x.

  `axes` names the kernel's dims (contracted dims, then output dims); the kernel and bias are
  stored in float32 under the names `kernel` and `bias`, and computed in `dtype`.
  """

  features: int | tuple[int, ...]
  axes: tuple[str, ...]
  dtype: Any
  use_bias: bool = True

  @nn.compact
  def __call__(self, x):
    features = (self.features,) if isinstance(self.features, int) else tuple(self.features)
    axes = tuple(self.axes)
    n_in = len(axes) - len(features)
    in_shape = x.shape[x.ndim - n_in:]
    init = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform",
                                            in_axis=tuple(range(n_in)),
                                            out_axis=tuple(range(n_in, len(axes))))
    kernel = param(self, "kernel", init, in_shape + features, axes, jnp.float32)
    y = jax.lax.dot_general(x.astype(self.dtype), kernel.astype(self.dtype),
                            ((tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in))), ((), ())))
    if not self.use_bias:
      return y
    bias = param(self, "bias", nn.initializers.zeros_init(), features, axes[n_in:], jnp.float32)
    return y + bias.astype(self.dtype)


# ----------------------------------------------------------------------------- norms
def LayerNorm(name: str, dtype, param_dtype=jnp.float32, eps: float = 1e-6) -> nn.LayerNorm:
  """An `nn.LayerNorm` (parameters `scale`, `bias`) whose parameters carry the axis `embed`."""
  return nn.LayerNorm(
      epsilon=eps, dtype=dtype, param_dtype=param_dtype, name=name,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("embed",)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed",)))


def layer_norm(x, scale, bias, eps):
  """LayerNorm over the last axis with explicit (e.g. stacked, scanned) parameters; statistics
  in float32."""
  x32 = x.astype(jnp.float32)
  mu = jnp.mean(x32, -1, keepdims=True)
  var = jnp.mean(jnp.square(x32 - mu), -1, keepdims=True)
  y = (x32 - mu) * jax.lax.rsqrt(var + eps)
  return (y * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(x.dtype)


def rms_norm(x, scale, eps):
  """RMSNorm over the last axis with an explicit scale; statistics in float32."""
  x32 = x.astype(jnp.float32)
  y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, -1, keepdims=True) + eps)
  return scale.astype(x.dtype) * y.astype(x.dtype)


# ----------------------------------------------------------------------------- rotary
def rotate_half(x):
  """[a, b] -> [-b, a] over the last axis, the rotation of rotary position embeddings."""
  a, b = jnp.split(x, 2, axis=-1)
  return jnp.concatenate([-b, a], axis=-1)
