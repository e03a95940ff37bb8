"""RetLLM defaults as a user meets them: the config and every Python entry point agree, and they
reproduce the released code (qwen_vl_utils pre-resize; trigger logits without the final norm)."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from configs import common, retllm_coco, retllm_demo, retllm_flickr30k
from retformer_jax.data import qwen_preprocess
from retformer_jax.models.qwen_injection import InjectionConfig
from retformer_jax.demo import qwen as demo_qwen
from retformer_jax.retllm import scorer
from retformer_jax.stages import retllm as stage

RELEASED = dict(pre_resize=True, final_norm=False)


def _default(fn, name):
  return inspect.signature(fn).parameters[name].default


@pytest.mark.parametrize("module", [common, retllm_flickr30k, retllm_coco, retllm_demo])
def test_config_defaults_are_the_released_computation(module):
  rc = module.get_config().retllm
  assert rc.pre_resize is RELEASED["pre_resize"]
  assert rc.injection_final_norm is RELEASED["final_norm"]
  assert stage.injection_config(rc).final_norm is RELEASED["final_norm"]
  assert stage.scorer_kwargs(rc)["pre_resize"] is RELEASED["pre_resize"]


def test_python_api_defaults_agree_with_the_config():
  rc = common.get_config().retllm
  assert InjectionConfig().final_norm is rc.injection_final_norm
  assert InjectionConfig(enabled=True) == InjectionConfig(enabled=True, final_norm=False)
  assert qwen_preprocess.QwenImageProcessor().pre_resize is rc.pre_resize
  assert _default(qwen_preprocess.QwenImageProcessor.from_folder, "pre_resize") is rc.pre_resize
  assert _default(scorer.PairScorer.from_folder, "pre_resize") is rc.pre_resize


def test_default_folder_processor_gives_the_released_pixels(tmp_path):
  """from_folder with no switch: qwen_vl_utils' resize (bicubic, multiples of 28), then the
  processor; not the processor alone."""
  from PIL import Image
  from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
      Qwen2VLImageProcessorPil)

  lo, hi = 16 * 28 * 28, 48 * 28 * 28
  demo_qwen.write_image_processor(str(tmp_path), min_pixels=lo, max_pixels=hi)
  proc = qwen_preprocess.QwenImageProcessor.from_folder(str(tmp_path))
  image = np.random.default_rng(3).integers(0, 256, (83, 131, 3), dtype=np.uint8)
  h, w = qwen_preprocess.fetch_image_size(83, 131)
  staged = Image.fromarray(image).resize((w, h), Image.Resampling.BICUBIC)
  ref = Qwen2VLImageProcessorPil(min_pixels=lo, max_pixels=hi)(
      images=[staged], return_tensors="np")["pixel_values"]
  ours = proc(image)[0]
  np.testing.assert_allclose(ours, ref, atol=1e-6, rtol=0)
  plain = Qwen2VLImageProcessorPil(min_pixels=lo, max_pixels=hi)(
      images=[Image.fromarray(image)], return_tensors="np")["pixel_values"]
  assert np.abs(plain - ours).max() > 1e-3  # the two resizes differ from one
