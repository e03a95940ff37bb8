"""Full-size CLIP configs: parameter counts and tensor shapes equal HF's, with no memory used
(`jax.eval_shape` on our side, the `meta` device on torch's); every parameter has logical axes."""

import flax.linen as nn
import jax
import numpy as np
import pytest
import torch
import transformers
from flax import traverse_util

from retformer_jax.convert import clip_import, mapping
from retformer_jax.models.clip import CLIP, abstract_params
from retformer_jax.models.clip_config import ClipConfig

CONFIGS = {
    # openai/clip-vit-base-patch16 (and laion DataComp ViT-B/16, which shares its shapes)
    "vit_b16": dict(
        text_config=dict(hidden_size=512, intermediate_size=2048, num_attention_heads=8,
                         num_hidden_layers=12),
        vision_config=dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                           num_hidden_layers=12, patch_size=16, image_size=224),
        projection_dim=512),
    # openai/clip-vit-large-patch14-336
    "vit_l14_336": dict(
        text_config=dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                         num_hidden_layers=12),
        vision_config=dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16,
                           num_hidden_layers=24, patch_size=14, image_size=336),
        projection_dim=768),
}
EXPECTED_COUNTS = {"vit_b16": 149_620_737, "vit_l14_336": 427_944_193}


def _hf_shapes(name):
  cfg = transformers.CLIPConfig(**CONFIGS[name])
  with torch.device("meta"):
    model = transformers.CLIPModel(cfg)
  return cfg, {k: tuple(p.shape) for k, p in model.named_parameters()}


@pytest.mark.parametrize("scan_layers", [True, False])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_parameter_count_and_shapes_match_hf(name, scan_layers):
  hf_cfg, hf_shapes = _hf_shapes(name)
  config = ClipConfig.from_hf_dict(hf_cfg.to_dict(), scan_layers=scan_layers)
  abstract = abstract_params(CLIP(config))
  ours = mapping.count_params(abstract)
  assert ours == sum(int(np.prod(s)) for s in hf_shapes.values()) == EXPECTED_COUNTS[name]

  # Every HF tensor is produced exactly once, with HF's shape.
  table = clip_import.rule_table(scan_layers)
  produced = {}
  for path, leaf in traverse_util.flatten_dict(abstract, sep="/").items():
    rule, m = mapping._find_rule(path, table)
    names, stacked = rule.source_names(m, leaf.shape)
    per = leaf.shape[1:] if stacked else leaf.shape
    for n in names:
      assert n not in produced
      produced[n] = tuple(rule.hook.hf_shape(per)) if per else ()
  assert set(produced) == set(hf_shapes)
  for n, shape in hf_shapes.items():
    assert int(np.prod(produced[n])) == int(np.prod(shape)), n
    assert len(shape) != len(produced[n]) or produced[n] == shape, n


@pytest.mark.parametrize("scan_layers", [True, False])
def test_every_parameter_has_logical_axes(scan_layers):
  hf_cfg, _ = _hf_shapes("vit_b16")
  model = CLIP(ClipConfig.from_hf_dict(hf_cfg.to_dict(), scan_layers=scan_layers))
  boxed = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                         jax.ShapeDtypeStruct((1, 224, 224, 3), np.float32),
                         jax.ShapeDtypeStruct((1, 77), np.int32))["params"]
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert leaves
  for leaf in leaves:
    assert isinstance(leaf, nn.Partitioned), leaf
    assert len(leaf.names) == leaf.value.ndim
  flat = traverse_util.flatten_dict(boxed, sep="/")
  q = flat["vision/encoder/layers/attn/q_kernel" if scan_layers
           else "vision/encoder/layers_0/attn/q_kernel"]
  expected = ("embed", "heads", "head_dim")
  assert q.names == (("layers",) + expected if scan_layers else expected)
