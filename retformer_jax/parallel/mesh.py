"""The device mesh and logical-axis rules, built from `config.mesh`.

One code path from 1 CPU device to a multi-host slice: the mesh always has axes
(`data`, `model`); -1 on an axis means "all remaining devices".
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "model")


def mesh_shape(data: int, model: int, num_devices: int) -> tuple[int, int]:
  if data == -1 and model == -1:
    raise ValueError("config.mesh: at most one of data/model may be -1.")
  if model == -1:
    model = num_devices // data
  if data == -1:
    data = num_devices // model
  if data * model != num_devices or data < 1 or model < 1:
    raise ValueError(
        f"config.mesh asks for data={data} x model={model} = {data * model} devices but "
        f"{num_devices} are available; set --config.mesh.data/--config.mesh.model so that "
        "their product is the device count (or use -1 for one of them).")
  return data, model


def make_mesh(mesh_config, devices: Sequence[jax.Device] | None = None) -> Mesh:
  devices = list(jax.devices() if devices is None else devices)
  data, model = mesh_shape(mesh_config.data, mesh_config.model, len(devices))
  try:
    from jax.experimental import mesh_utils

    grid = mesh_utils.create_device_mesh((data, model), devices=devices)
  except (ValueError, NotImplementedError, AssertionError):
    grid = np.asarray(devices).reshape(data, model)
  return Mesh(grid, MESH_AXES)


def axis_rules(mesh_config) -> tuple[tuple[str, str | None], ...]:
  return tuple((str(k), None if v is None else str(v)) for k, v in mesh_config.axis_rules)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading axis split over `data`, the rest replicated."""
  return NamedSharding(mesh, P("data"))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


@contextlib.contextmanager
def activate(mesh: Mesh, rules) -> Iterator[None]:
  """Traces and runs under `mesh` with the logical-axis `rules`: the one place both are set."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield
