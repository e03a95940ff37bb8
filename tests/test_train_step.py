"""Train step (loss goes down, no recompiles, donated state), input pipeline, NaN handling."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from configs import common
from retformer_jax import errors, preemption
from retformer_jax.parallel import mesh as mesh_lib
from retformer_jax.train import checkpointing, input_pipeline, loop, synthetic


def tiny_config():
  c = common.get_config()
  c.model.num_layers, c.model.num_heads = 1, 2
  c.train.batch_size, c.train.epochs, c.train.log_every = 16, 2, 1
  c.train.lr, c.train.warmup_epochs, c.train.mixup_alpha = 3e-3, 0.0, 0.2
  c.checkpoint.every_steps, c.checkpoint.async_save = 1000, False
  c.eval.batch_size = 16
  return c


@pytest.mark.slow
def test_train_step_learns_without_recompiling_and_donates_state():
  c = tiny_config()
  data = synthetic.make()
  setup = loop.make_setup(c, data.training())
  it = input_pipeline.TrainIterator(data.train, c.train.batch_size, c.seed, setup.batch_sharding)
  state = setup.init_state(c.seed)
  step = setup.step
  rng = jax.random.key(0)
  batch = next(it)
  first = None
  for i in range(30):
    old = state
    state, m = step(state, batch if i < 25 else next(it), rng)
    if first is None:
      first = float(m["loss"])
    assert all(x.is_deleted() for x in jax.tree.leaves(old.params))
    for k in ("grad_norm", "param_norm", "loss", "accuracy"):
      assert np.isfinite(float(m[k]))
  assert int(state.step) == 30
  assert step.jitted._cache_size() == 1  # one compilation for every batch
  # 25 steps on one fixed batch: the loss must drop a lot (mixup keeps it above 0).
  last = float(step(state, batch, rng)[1]["loss"])
  assert last < 0.6 * first, (first, last)
  it.close()


def test_iterator_is_deterministic_and_resumable():
  c = tiny_config()
  data = synthetic.make()
  mesh = mesh_lib.make_mesh(c.mesh)
  bsh = mesh_lib.batch_sharding(mesh)
  a = input_pipeline.TrainIterator(data.train, 16, 7, bsh)
  ref = [np.asarray(next(a)["label"]) for _ in range(2 * a.steps_per_epoch + 3)]
  state_at = a.steps_per_epoch + 1
  b = input_pipeline.TrainIterator(data.train, 16, 7, bsh)
  for _ in range(state_at):
    next(b)
  saved = b.get_state()
  assert saved == {"epoch": 1, "position": 1, "seed": 7}
  c2 = input_pipeline.TrainIterator(data.train, 16, 7, bsh)
  c2.set_state(saved)
  rest = [np.asarray(next(c2)["label"]) for _ in range(len(ref) - state_at)]
  for x, y in zip(ref[state_at:], rest):
    np.testing.assert_array_equal(x, y)
  # Each epoch is a permutation of the labelled examples (remainder dropped).
  epoch0 = np.concatenate(ref[:a.steps_per_epoch])
  assert len(epoch0) == a.steps_per_epoch * 16
  for it in (a, b, c2):
    it.close()


def test_eval_batches_pad_with_a_mask():
  c = tiny_config()
  data = synthetic.make()  # 40 val examples
  bsh = mesh_lib.batch_sharding(mesh_lib.make_mesh(c.mesh))
  seen = []
  for batch, idx, mask in input_pipeline.eval_batches(data.val, 16, bsh):
    assert batch["z"].shape[0] == 16
    np.testing.assert_array_equal(np.asarray(batch["mask"]), mask)
    seen.extend(idx[mask])
  assert sorted(seen) == list(range(len(data.val)))
  assert len(data.val) % 16 != 0  # the last batch really is padded


def test_query_set_validates_shapes():
  data = synthetic.make()
  with pytest.raises(ValueError, match="rows disagree"):
    input_pipeline.QuerySet(image=data.train.image[:-1], labels=data.train.labels,
                            neighbor_rows=data.train.neighbor_rows, kb=data.train.kb)


@pytest.mark.slow
def test_nan_stops_the_run_and_keeps_the_good_checkpoint(tmp_path, monkeypatch):
  c = tiny_config()
  c.train.epochs = 3
  data = synthetic.make()
  with monkeypatch.context() as m:  # the first run is preempted after 2 steps
    m.setattr(preemption, "reached", lambda step: step >= 2)
    with pytest.raises(errors.Preempted, match="step 2 of"):
      loop.train(c, str(tmp_path), data.training())
  ckpt_dir = str(tmp_path / "checkpoints")
  good_step = checkpointing.resolve_step(ckpt_dir)
  good = checkpointing.load_params(ckpt_dir, good_step)
  image = np.array(data.train.image)
  image[:] = np.nan  # every later batch is poisoned
  bad = loop.TrainData(train=input_pipeline.QuerySet(image=image, labels=data.train.labels,
                                                     neighbor_rows=data.train.neighbor_rows,
                                                     kb=data.train.kb),
                       train_counts=data.train_counts)
  with pytest.raises(loop.NonFiniteError, match="latest good checkpoint is step 2"):
    loop.train(c, str(tmp_path), bad)
  mgr = checkpointing.Checkpointer(ckpt_dir)
  assert mgr.latest_step() == good_step
  mgr.close()
  again = checkpointing.load_params(ckpt_dir)
  for x, y in zip(jax.tree.leaves(good), jax.tree.leaves(again)):
    np.testing.assert_array_equal(x, y)
    assert np.all(np.isfinite(y))


def test_checkpoints_keep_the_last_n_and_the_best(tmp_path):
  ckpt = checkpointing.Checkpointer(str(tmp_path), keep_last=2, keep_best=1, async_save=True)
  val = {1: 0.2, 2: 0.9, 3: 0.5, 4: None, 5: 0.4}
  for step, top1 in val.items():
    state = {"params": {"w": np.full((3,), float(step), np.float32)}}
    ckpt.save(step, state, {"epoch": step, "position": 0, "seed": 0},
              metrics=None if top1 is None else {checkpointing.BEST_METRIC: top1})
  ckpt.wait()
  assert ckpt.all_steps() == [2, 4, 5]
  assert ckpt.best_step() == 2 and ckpt.latest_step() == 5
  ckpt.close()
  assert checkpointing.resolve_step(str(tmp_path)) == 2  # eval default: the best
  np.testing.assert_array_equal(checkpointing.load_params(str(tmp_path), 4)["w"], [4.0] * 3)
  with pytest.raises(FileNotFoundError, match="available"):
    checkpointing.load_params(str(tmp_path), 3)


@pytest.mark.slow
def test_nan_before_any_checkpoint_says_so(tmp_path):
  c = tiny_config()
  data = synthetic.make()
  image = np.full_like(np.asarray(data.train.image), np.nan)
  bad = loop.TrainData(train=input_pipeline.QuerySet(image=image, labels=data.train.labels,
                                                     neighbor_rows=data.train.neighbor_rows,
                                                     kb=data.train.kb),
                       train_counts=data.train_counts)
  with pytest.raises(loop.NonFiniteError, match="no checkpoint was saved") as e:
    loop.train(c, str(tmp_path), bad)
  assert "step None" not in str(e.value)
