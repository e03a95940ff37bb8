"""`hf.load_clip` refuses bad folders with errors that name the problem, and accepts the
variations real checkpoints carry (OpenCLIP exports: buffers, fp16, legacy config keys)."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from retformer_jax.convert import hf, safetensors_io
from retformer_jax.convert.mapping import WeightImportError
from retformer_jax.models.clip_config import ClipConfigError
from tiny_clip import save_hf_clip


@pytest.fixture(scope="module")
def source(tmp_path_factory):
  folder = str(tmp_path_factory.mktemp("clip"))
  save_hf_clip(folder)
  return folder


def _tensors(folder):
  r = safetensors_io.SafetensorsFolder(folder)
  return {k: np.array(r.get(k)) for k in r.keys()}


def _copy_with(source, dest, edit):
  shutil.copytree(source, dest)
  tensors = _tensors(source)
  edit(tensors)
  safetensors_io.save_file(tensors, os.path.join(dest, "model.safetensors"))
  return str(dest)


def test_missing_tensor_is_named(source, tmp_path):
  name = "vision_model.encoder.layers.1.mlp.fc2.bias"
  folder = _copy_with(source, tmp_path / "f", lambda t: t.pop(name))
  for scan in (True, False):
    with pytest.raises(WeightImportError, match="missing") as e:
      hf.load_clip(folder, scan_layers=scan)
    assert name in str(e.value)


def test_unexpected_tensor_is_named(source, tmp_path):
  name = "text_model.encoder.layers.0.extra.weight"
  folder = _copy_with(source, tmp_path / "f", lambda t: t.update({name: np.zeros(3, np.float32)}))
  with pytest.raises(WeightImportError, match="unexpected") as e:
    hf.load_clip(folder)
  assert name in str(e.value)


def test_misshaped_tensor_is_named(source, tmp_path):
  def edit(t):
    t["visual_projection.weight"] = np.zeros((25, 48), np.float32)
  folder = _copy_with(source, tmp_path / "f", edit)
  with pytest.raises(WeightImportError, match="wrong shape") as e:
    hf.load_clip(folder)
  assert "visual_projection.weight: checkpoint has [25, 48], model expects [24, 48]" in str(e.value)


def test_config_with_more_layers_than_weights(source, tmp_path):
  folder = tmp_path / "f"
  shutil.copytree(source, folder)
  cfg = json.loads((folder / "config.json").read_text())
  cfg["text_config"]["num_hidden_layers"] = 3
  (folder / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(WeightImportError) as e:
    hf.load_clip(str(folder))
  assert "text_model.encoder.layers.2.self_attn.q_proj.weight" in str(e.value)


def test_missing_folder_config_and_pickled_weights(source, tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    hf.load_clip(str(tmp_path / "nowhere"))
  pickled = tmp_path / "pickled"
  pickled.mkdir()
  shutil.copy(os.path.join(source, "config.json"), pickled)
  (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04not read")
  with pytest.raises(FileNotFoundError, match="pickled weights .*pytorch_model.bin.*safetensors"):
    hf.load_clip(str(pickled))
  no_config = tmp_path / "no_config"
  no_config.mkdir()
  shutil.copy(os.path.join(source, "model.safetensors"), no_config)
  with pytest.raises(FileNotFoundError, match="config.json"):
    hf.load_clip(str(no_config))


def test_other_model_type_is_refused(source, tmp_path):
  folder = tmp_path / "f"
  shutil.copytree(source, folder)
  cfg = json.loads((folder / "config.json").read_text())
  cfg["model_type"] = "siglip"
  (folder / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(ClipConfigError, match="model_type 'siglip'"):
    hf.load_clip(str(folder))


def test_unsupported_activation_is_refused(source, tmp_path):
  folder = tmp_path / "f"
  shutil.copytree(source, folder)
  cfg = json.loads((folder / "config.json").read_text())
  cfg["vision_config"]["hidden_act"] = "mish"
  (folder / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(ClipConfigError, match="hidden_act 'mish'"):
    hf.load_clip(str(folder))


def test_openclip_style_export_loads(source, tmp_path):
  """OpenCLIP checkpoints in HF format: fp16 tensors, `position_ids` buffers, legacy
  `text_config_dict` entries that override `text_config`, and beside model.safetensors an
  `open_clip_model.safetensors` with OpenCLIP's own names (not read)."""
  def edit(t):
    for k in list(t):
      t[k] = t[k].astype(np.float16)
    t["text_model.embeddings.position_ids"] = np.arange(16, dtype=np.int64)[None]
    t["vision_model.embeddings.position_ids"] = np.arange(26, dtype=np.int64)[None]
  folder = _copy_with(source, tmp_path / "f", edit)
  safetensors_io.save_file({"visual.proj": np.zeros((48, 24), np.float16)},
                           os.path.join(folder, "open_clip_model.safetensors"))
  cfg_path = os.path.join(folder, "config.json")
  with open(cfg_path) as f:
    cfg = json.load(f)
  cfg["text_config_dict"] = {"hidden_act": cfg["text_config"]["hidden_act"]}
  cfg["text_config"]["hidden_act"] = "relu"  # overridden by text_config_dict
  with open(cfg_path, "w") as f:
    json.dump(cfg, f)
  model, params = hf.load_clip(folder)
  assert model.config.text.hidden_act == "gelu"
  _, ref_params = hf.load_clip(source)
  ref_k = np.asarray(ref_params["text_projection"]).astype(np.float16).astype(np.float32)
  np.testing.assert_array_equal(np.asarray(params["text_projection"]), ref_k)
  assert params["text_projection"].dtype == np.float32


def test_sharded_checkpoint_loads(tmp_path):
  """A checkpoint split over shards with a `model.safetensors.index.json`."""
  model = save_hf_clip(str(tmp_path / "single"))
  model.save_pretrained(str(tmp_path / "sharded"), max_shard_size="20KB")
  names = os.listdir(tmp_path / "sharded")
  assert "model.safetensors.index.json" in names and len(names) > 3
  _, params = hf.load_clip(str(tmp_path / "sharded"), scan_layers=False)
  _, ref = hf.load_clip(str(tmp_path / "single"), scan_layers=False)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
