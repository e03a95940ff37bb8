"""Every config file loads the way main loads it (locked, overridable, typo- and type-checked)."""

import pathlib

from absl import flags
from ml_collections import config_flags
import pytest

from retformer_jax import stages
from retformer_jax.data import registry

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
# Every runnable config (common.py holds the declarations the others start from).
ALL = sorted(p.name for p in CONFIGS.glob("*.py")
             if "def get_config(arg" in p.read_text() and p.name != "common.py")
PAPER = {"cifar100_lt.py": "lace", "imagenet_lt.py": "lace", "places_lt.py": "lace",
         "inat.py": "lace", "webvision.py": "ce"}


def _parse(spec: str, *overrides: str):
  """As main does (override flags are declared from the command line, passed as sys_argv)."""
  argv = ["main", f"--config={CONFIGS / spec}", *overrides]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "config file", flag_values=values,
                                  lock_config=True, sys_argv=argv)
  values(argv)
  return values.config


def test_the_data_set_configs_and_the_demo_are_there():
  assert set(PAPER) | {"demo.py"} <= set(ALL)


@pytest.mark.parametrize("variant", ["", ":runlocal"])
@pytest.mark.parametrize("name", ALL)
def test_config_loads_locked(name, variant):
  c = _parse(name + variant)
  stages.check_names(c.stages)
  assert c.data.name in registry.READERS
  with pytest.raises(AttributeError):
    c.data.new_key = 1  # locked: no key can be added after loading


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_recipe(name):
  c = _parse(name)
  assert (c.train.epochs, c.train.batch_size, c.train.lr, c.train.weight_decay) == (
      25, 256, 5e-4, 0.1)
  assert c.train.warmup_epochs == 1.0 and c.train.label_smoothing > 0 and c.train.mixup_alpha > 0
  assert (c.neighbors.k, c.model.num_layers, c.index.backend) == (32, 4, "faiss")
  assert c.train.loss == PAPER[name] and c.model.use_retrieval
  assert c.data.max_examples == 0
  doc = (CONFIGS / name).read_text()
  assert f"--config=configs/{name}" in doc and f"--config=configs/{name}:runlocal" in doc


@pytest.mark.parametrize("name", sorted(PAPER))
def test_runlocal_shrinks_everything(name):
  full, small = _parse(name), _parse(name + ":runlocal")
  assert full.data.name == small.data.name
  assert 0 < small.data.max_examples <= 1024
  assert small.train.epochs < full.train.epochs and small.train.batch_size < full.train.batch_size
  assert small.neighbors.k < full.neighbors.k and small.model.num_layers < full.model.num_layers
  assert small.clip.batch_size < full.clip.batch_size
  assert small.clip.dtype == small.model.dtype == "float32"


def test_webvision_evaluates_on_both_val_sets_with_top5():
  c = _parse("webvision.py")
  assert tuple(c.data.eval_splits) == ("val", "imagenet_val") and c.eval.top5


def test_overrides_apply():
  c = _parse("inat.py:runlocal", "--config.train.lr=1e-4", "--config.data.tfds_data_dir=/d")
  assert c.train.lr == 1e-4 and c.data.tfds_data_dir == "/d"


@pytest.mark.parametrize("name", ["inat.py", "demo.py"])
def test_unknown_key_is_an_error(name):
  with pytest.raises(AttributeError, match='Did you mean "tfds_data_dir" instead of "tfds_dir"'):
    _parse(name, "--config.data.tfds_dir=/d")


@pytest.mark.parametrize("name", ["places_lt.py", "demo.py"])
def test_wrong_type_is_an_error(name):
  with pytest.raises(flags.IllegalFlagValueError, match="num_workers=many: invalid literal"):
    _parse(name, "--config.data.num_workers=many")
