"""The declarative weight-import machinery and the NumPy safetensors reader/writer."""

import json
import struct

import jax
import ml_dtypes
import numpy as np
import pytest

from retformer_jax.convert import mapping as M
from retformer_jax.convert import safetensors_io as sio

ABSTRACT = {
    "layers": {"q": {"kernel": jax.ShapeDtypeStruct((3, 4, 2, 2), np.float32),
                     "bias": jax.ShapeDtypeStruct((3, 2, 2), np.float32)}},
    "conv": {"kernel": jax.ShapeDtypeStruct((2, 2, 3, 5), np.float32)},
}
TABLE = M.rules(
    (r"layers/q/kernel", "enc.layers.{layer}.q.weight", M.Linear()),
    (r"layers/q/bias", "enc.layers.{layer}.q.bias", M.Reshape()),
    (r"(conv)/kernel", "{1}.weight", M.Conv()),
)


def _params(rng):
  return jax.tree.map(lambda a: rng.standard_normal(a.shape).astype(np.float32), ABSTRACT)


def test_export_then_load_round_trips(tmp_path):
  params = _params(np.random.default_rng(0))
  hf = M.export_params(params, TABLE)
  assert hf["enc.layers.1.q.weight"].shape == (4, 4)  # torch Linear [out, in]
  assert hf["conv.weight"].shape == (5, 3, 2, 2)  # torch Conv [out, in, kh, kw]
  np.testing.assert_array_equal(hf["enc.layers.2.q.weight"],
                                params["layers"]["q"]["kernel"][2].reshape(4, 4).T)
  sio.save_file(hf, str(tmp_path / "model.safetensors"))
  back = M.load_params(ABSTRACT, TABLE, sio.SafetensorsFolder(str(tmp_path)))
  jax.tree.map(np.testing.assert_array_equal, back, params)


def test_errors_name_every_bad_tensor(tmp_path):
  hf = M.export_params(_params(np.random.default_rng(1)), TABLE)
  hf["stray.weight"] = np.zeros(3, np.float32)
  hf["enc.layers.1.q.weight"] = np.zeros((3, 3), np.float32)
  del hf["conv.weight"]
  sio.save_file(hf, str(tmp_path / "model.safetensors"))
  with pytest.raises(M.WeightImportError) as e:
    M.load_params(ABSTRACT, TABLE, sio.SafetensorsFolder(str(tmp_path)))
  msg = str(e.value)
  assert "conv.weight" in msg and "stray.weight" in msg and "enc.layers.1.q.weight" in msg
  assert "[3, 3]" in msg and "[4, 4]" in msg


def test_ignored_and_unmapped(tmp_path):
  hf = M.export_params(_params(np.random.default_rng(2)), TABLE)
  hf["enc.position_ids"] = np.arange(4)
  sio.save_file(hf, str(tmp_path / "model.safetensors"))
  M.load_params(ABSTRACT, TABLE, sio.SafetensorsFolder(str(tmp_path)), ignore=[r".*position_ids"])
  with pytest.raises(M.WeightImportError, match="no mapping rule"):
    M.load_params(ABSTRACT, TABLE[:2], sio.SafetensorsFolder(str(tmp_path)),
                  ignore=[r".*position_ids", r"conv\..*"])


def test_safetensors_dtypes_and_sharded_index(tmp_path):
  a = np.arange(6, dtype=np.float32).reshape(2, 3).astype(ml_dtypes.bfloat16)
  b = np.arange(4, dtype=np.int64)
  sio.save_file({"a": a}, str(tmp_path / "model-00001-of-00002.safetensors"))
  sio.save_file({"b": b}, str(tmp_path / "model-00002-of-00002.safetensors"))
  (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
      "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
  r = sio.SafetensorsFolder(str(tmp_path))
  assert sorted(r.keys()) == ["a", "b"]
  assert r.get("a").dtype == ml_dtypes.bfloat16
  np.testing.assert_array_equal(r.get("a").astype(np.float32), a.astype(np.float32))
  np.testing.assert_array_equal(r.get("b"), b)


def test_safetensors_matches_reference_library(tmp_path):
  from safetensors.numpy import load_file, save_file
  t = {"x": np.random.default_rng(0).standard_normal((3, 5)).astype(np.float16)}
  save_file(t, str(tmp_path / "ref.safetensors"))
  ours = sio.SafetensorsFile(str(tmp_path / "ref.safetensors"))
  np.testing.assert_array_equal(ours.get("x"), t["x"])
  sio.save_file(t, str(tmp_path / "ours.safetensors"))
  np.testing.assert_array_equal(load_file(str(tmp_path / "ours.safetensors"))["x"], t["x"])


def test_bad_folders(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    sio.SafetensorsFolder(str(tmp_path / "nope"))
  (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x02")
  with pytest.raises(FileNotFoundError, match="pickled"):
    sio.SafetensorsFolder(str(tmp_path))
  (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", 10) + b"{not json}")
  with pytest.raises(sio.SafetensorsError, match="corrupt"):
    sio.SafetensorsFolder(str(tmp_path))
