"""Long-CLIP: a 248-position text tower, and the converter from the original checkpoint.

The reference here is Long-CLIP's own computation written out in torch (OpenAI CLIP blocks, the
text positions `positional_embedding * mask1 + positional_embedding_res * mask2`, pooling at the
highest token id), built from the very state dict the converter reads.
"""

from __future__ import annotations

import collections
import json
import os

import jax
import numpy as np
import pytest
import torch
from torch import nn

from retformer_jax.convert import hf, longclip

TOL = 1e-4
VOCAB, POSITIONS, SPLIT = 99, 248, 20


def _encoders(model):
  img = jax.jit(lambda p, x: model.apply({"params": p}, x, method=model.encode_image))
  txt = jax.jit(lambda p, i, m: model.apply({"params": p}, i, m, method=model.encode_text))
  return img, txt


def _long_ids(lengths, total=POSITIONS, seed=0):
  """longclip.tokenize's layout: sot, tokens, eot (the highest id), zeros after."""
  rng = np.random.default_rng(seed)
  ids = np.zeros((len(lengths), total), np.int64)
  for i, n in enumerate(lengths):
    ids[i, 0] = VOCAB - 2
    ids[i, 1:n - 1] = rng.integers(1, VOCAB - 2, n - 2)
    ids[i, n - 1] = VOCAB - 1
  return ids


def test_248_text_positions_match_transformers(tmp_path):
  """A HF CLIP folder with 248 text positions: features of a 200-token input match HF."""
  import transformers

  torch.manual_seed(0)
  cfg = transformers.CLIPConfig(
      text_config=dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=37,
                       num_hidden_layers=2, num_attention_heads=4,
                       max_position_embeddings=POSITIONS, eos_token_id=VOCAB - 1,
                       bos_token_id=VOCAB - 2, pad_token_id=0),
      vision_config=dict(hidden_size=32, intermediate_size=40, num_hidden_layers=1,
                         num_attention_heads=4, image_size=16, patch_size=8),
      projection_dim=24)
  ref = transformers.CLIPModel(cfg).eval()
  with torch.no_grad():  # position rows past 77 must matter: make them large and distinct
    ref.text_model.embeddings.position_embedding.weight.normal_(0, 0.5)
  ref.save_pretrained(str(tmp_path))
  ids = _long_ids([200, 120])
  mask = (np.arange(POSITIONS)[None] < np.array([[200], [120]])).astype(np.int64)
  with torch.no_grad():
    want = ref.get_text_features(input_ids=torch.from_numpy(ids),
                                 attention_mask=torch.from_numpy(mask)).pooler_output.numpy()
  model, params = hf.load_clip(str(tmp_path))
  assert model.config.text.max_position_embeddings == POSITIONS
  got = np.asarray(_encoders(model)[1](params, ids, mask))
  assert np.abs(want).max() > 0.1
  np.testing.assert_allclose(got, want, atol=TOL * max(1.0, np.abs(want).max()), rtol=0)


# --------------------------------------------------------------- Long-CLIP in OpenAI layout
class QuickGELU(nn.Module):
  def forward(self, x):
    return x * torch.sigmoid(1.702 * x)


class Block(nn.Module):
  def __init__(self, d, heads):
    super().__init__()
    self.attn = nn.MultiheadAttention(d, heads)
    self.ln_1 = nn.LayerNorm(d)
    self.mlp = nn.Sequential(collections.OrderedDict(
        c_fc=nn.Linear(d, 4 * d), gelu=QuickGELU(), c_proj=nn.Linear(4 * d, d)))
    self.ln_2 = nn.LayerNorm(d)

  def forward(self, x, mask=None):  # x: [L, N, D]
    y = self.ln_1(x)
    x = x + self.attn(y, y, y, need_weights=False, attn_mask=mask)[0]
    return x + self.mlp(self.ln_2(x))


class Tower(nn.Module):
  def __init__(self, d, heads, layers):
    super().__init__()
    self.resblocks = nn.ModuleList([Block(d, heads) for _ in range(layers)])

  def forward(self, x, mask=None):
    for blk in self.resblocks:
      x = blk(x, mask)
    return x


class Visual(nn.Module):
  def __init__(self, size, patch, d, heads, layers, out):
    super().__init__()
    self.conv1 = nn.Conv2d(3, d, patch, patch, bias=False)
    self.class_embedding = nn.Parameter(torch.randn(d) * d ** -0.5)
    self.positional_embedding = nn.Parameter(torch.randn((size // patch) ** 2 + 1, d) * 0.1)
    self.ln_pre = nn.LayerNorm(d)
    self.transformer = Tower(d, heads, layers)
    self.ln_post = nn.LayerNorm(d)
    self.proj = nn.Parameter(torch.randn(d, out) * d ** -0.5)

  def forward(self, x):  # NCHW
    x = self.conv1(x).flatten(2).permute(0, 2, 1)
    cls = self.class_embedding + torch.zeros(x.shape[0], 1, x.shape[-1])
    x = self.ln_pre(torch.cat([cls, x], 1) + self.positional_embedding)
    x = self.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
    return self.ln_post(x[:, 0]) @ self.proj


class LongClip(nn.Module):
  """model_longclip.py's CLIP (ViT), tiny: its state dict is a Long-CLIP checkpoint."""

  def __init__(self, text_width=128, vision_width=64, embed=32, size=32, patch=8):
    super().__init__()
    self.visual = Visual(size, patch, vision_width, vision_width // 64, 2, embed)
    self.transformer = Tower(text_width, text_width // 64, 2)
    self.token_embedding = nn.Embedding(VOCAB, text_width)
    self.positional_embedding = nn.Parameter(torch.randn(POSITIONS, text_width) * 0.3)
    self.positional_embedding_res = nn.Parameter(torch.randn(POSITIONS, text_width) * 0.3)
    self.ln_final = nn.LayerNorm(text_width)
    self.text_projection = nn.Parameter(torch.randn(text_width, embed) * text_width ** -0.5)
    self.logit_scale = nn.Parameter(torch.tensor(np.log(1 / 0.07), dtype=torch.float32))
    self.mask1 = torch.zeros(POSITIONS, 1)
    self.mask1[:SPLIT] = 1
    self.mask2 = torch.zeros(POSITIONS, 1)
    self.mask2[SPLIT:] = 1

  def encode_image(self, x):
    return self.visual(x)

  def encode_text(self, ids):
    x = self.token_embedding(ids)
    x = x + self.positional_embedding * self.mask1 + self.positional_embedding_res * self.mask2
    causal = torch.full((POSITIONS, POSITIONS), float("-inf")).triu_(1)
    x = self.transformer(x.permute(1, 0, 2), causal).permute(1, 0, 2)
    x = self.ln_final(x)
    return x[torch.arange(x.shape[0]), ids.argmax(dim=-1)] @ self.text_projection


class Opaque:
  """Any pickled Python object: reading it needs full unpickling."""


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  torch.manual_seed(1)
  ref = LongClip().eval()
  with torch.no_grad():  # non-trivial LayerNorms and biases, so every mapped tensor matters
    for name, p in ref.named_parameters():
      if name.endswith("bias") or ".ln_" in name or name.startswith("ln_"):
        p.add_(0.1 * torch.randn_like(p))
  root = tmp_path_factory.mktemp("longclip")
  ckpt = str(root / "longclip-T.pt")
  state = ref.state_dict()
  assert "mask1" not in state and "positional_embedding_res" in state
  torch.save(state, ckpt)
  tok = root / "tok"
  tok.mkdir()
  (tok / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 77}))
  (tok / "vocab.json").write_text("{}")
  out = longclip.convert(ckpt, str(root / "hf"), tokenizer=str(tok))
  return ref, ckpt, out


def test_converted_features_follow_the_longclip_formula(converted):
  ref, _, out = converted
  model, params = hf.load_clip(out)
  assert model.config.text.max_position_embeddings == POSITIONS
  assert (model.config.text.num_heads, model.config.vision.num_heads) == (2, 1)
  ids = _long_ids([200, 15, 60], seed=3)  # one row stays inside the first 20 positions
  pixels = np.random.default_rng(4).standard_normal((2, 32, 32, 3)).astype(np.float32)
  with torch.no_grad():
    want_txt = ref.encode_text(torch.from_numpy(ids)).numpy()
    want_img = ref.encode_image(torch.from_numpy(pixels.transpose(0, 3, 1, 2))).numpy()
  img_fn, txt_fn = _encoders(model)
  got_txt = np.asarray(txt_fn(params, ids, np.ones_like(ids)))
  got_img = np.asarray(img_fn(params, pixels))
  for got, want in ((got_txt, want_txt), (got_img, want_img)):
    assert np.abs(want).max() > 0.1
    np.testing.assert_allclose(got, want, atol=TOL * max(1.0, np.abs(want).max()), rtol=0)


def test_converted_folder_is_a_transformers_clip_with_tokenizer(converted):
  import transformers

  ref, _, out = converted
  assert json.load(open(os.path.join(out, "tokenizer_config.json")))["model_max_length"] == 248
  assert os.path.isfile(os.path.join(out, "vocab.json"))
  assert json.load(open(os.path.join(out, "preprocessor_config.json")))["crop_size"] == {
      "height": 32, "width": 32}
  hf_model = transformers.CLIPModel.from_pretrained(out).eval()
  assert hf_model.logit_scale.shape == () and float(hf_model.logit_scale) == pytest.approx(
      float(ref.logit_scale))
  ids = _long_ids([230], seed=5)
  with torch.no_grad():
    got = hf_model.get_text_features(input_ids=torch.from_numpy(ids)).pooler_output.numpy()
    want = ref.encode_text(torch.from_numpy(ids)).numpy()
  np.testing.assert_allclose(got, want, atol=TOL * max(1.0, np.abs(want).max()), rtol=0)


def test_refuses_what_it_must_not_read(tmp_path, converted):
  _, ckpt, _ = converted
  with pytest.raises(longclip.LongClipError, match="not empty"):
    longclip.convert(ckpt, os.path.dirname(ckpt))
  with pytest.raises(longclip.LongClipError, match="not found"):
    longclip.convert(str(tmp_path / "missing.pt"), str(tmp_path / "o"))

  bad = str(tmp_path / "object.pt")
  torch.save({"model": Opaque()}, bad)
  with pytest.raises(longclip.LongClipError, match="weights_only=True.*refusing"):
    longclip.read_checkpoint(bad)

  scripted = str(tmp_path / "scripted.pt")
  torch.jit.save(torch.jit.script(nn.Linear(2, 2)), scripted)
  with pytest.raises(longclip.LongClipError,
                     match="TorchScript archive .*runs code when loaded; refusing"):
    longclip.read_checkpoint(scripted)

  state = torch.load(ckpt, weights_only=True)
  state["extra.weight"] = torch.zeros(2)
  extra = str(tmp_path / "extra.pt")
  torch.save(state, extra)
  with pytest.raises(longclip.LongClipError, match="no HF CLIP counterpart.*extra.weight"):
    longclip.convert(extra, str(tmp_path / "o2"))


def test_command_line(tmp_path, converted, capsys):
  _, ckpt, _ = converted
  assert longclip.main(["--checkpoint", ckpt, "--out", str(tmp_path / "cli")]) == 0
  assert "copy vocab.json" in capsys.readouterr().out
  assert longclip.main(["--checkpoint", ckpt, "--out", str(tmp_path / "cli")]) == 2
  assert "not empty" in capsys.readouterr().err
