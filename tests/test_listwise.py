"""ListwiseScorer: the reference's listwise prompts, read as transformers reads them, batched.

The tiny Qwen2.5-VL is loaded in transformers, given non-trivial norms and biases, saved with
save_pretrained beside the demo tokenizer; the reference is the HF forward over the prompt the
released code builds (its text literally, chat template, image placeholder expanded as the
processor does), logits of the last position.
"""

from __future__ import annotations

import functools
import os
import shutil

import jax
import numpy as np
import pytest

from retformer_jax.demo import qwen as demo_qwen
from retformer_jax.models import qwen2_5_vl
from retformer_jax.models.qwen_injection import InjectionConfig
from retformer_jax.retllm import listwise, scorer

CORPUS = ["a red fox jumps over the fence", "two dogs play in the snow", "a man rides a bike",
          "children on a sunny beach", "an old boat near the pier"]
FIRES = InjectionConfig(enabled=True, layer_lo=0, layer_hi=3, tau=0.0)  # arms layer 2 always
# Sizes already multiples of 28 within [min, max] pixels: the qwen_vl_utils resize is a no-op,
# so transformers' image processor alone gives the reference pixels.
SIZES = ((84, 112), (112, 112), (112, 84))


def _reference_text(kind: str, captions) -> str:
  """The released prompts, written out as in Codes/Qwen_vl.py (lines 1525-1539, 2946-2959)."""
  label_index = [str(i + 1) for i in range(len(captions))]
  if kind == "retrieval":
    choices = ", ".join([f"{label_index[i]}: {captions[i]}" for i in range(len(captions))])
    instruction = "What is in this picture?"
    prompts = (f"Choose the most relevant sentence of the image from the following options: "
               f"{choices}. You should directly output the answer index, for example: 1.")
  else:
    choices = ", ".join([f"{label_index[i]}: {captions[i]}\n" for i in range(len(captions))])
    instruction = "What is in the picture"
    prompts = (f"Choose the most relevant description from the following options : \n"
               f"{choices}. You should directly output the answer index, for example: 1.")
  return instruction + "\n" + prompts


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  import torch
  from transformers import Qwen2_5_VLForConditionalGeneration

  demo = demo_qwen.build_demo_qwen(str(tmp_path_factory.mktemp("lw") / "demo"), CORPUS,
                                   min_pixels=8 * 784, max_pixels=16 * 784, seed=1)
  model = Qwen2_5_VLForConditionalGeneration.from_pretrained(demo, dtype=torch.float32)
  torch.manual_seed(0)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("bias") or "norm" in name:
        p.add_(0.1 * torch.randn_like(p))
  out = str(tmp_path_factory.mktemp("lw") / "hf")
  model.save_pretrained(out)
  for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
            "preprocessor_config.json"):
    shutil.copy(os.path.join(demo, f), out)
  return out


@pytest.fixture(scope="module")
def images():
  rng = np.random.default_rng(0)
  return [rng.integers(0, 256, hw + (3,), dtype=np.uint8) for hw in SIZES]


@pytest.fixture(scope="module")
def hf(folder):
  import torch
  from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration
  from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
      Qwen2VLImageProcessorPil)

  return (AutoTokenizer.from_pretrained(folder),
          Qwen2VLImageProcessorPil.from_pretrained(folder),
          Qwen2_5_VLForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval())


def _hf_inputs(hf, kind, image, captions):
  """input_ids, pixel_values and grid as the released code builds them (processor path)."""
  from PIL import Image

  tok, proc, _ = hf
  messages = [{"role": "user", "content": [
      {"type": "image", "image": Image.fromarray(image)},
      {"type": "text", "text": _reference_text(kind, captions)}]}]
  text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
  enc = proc(images=[Image.fromarray(image)], return_tensors="np")
  grid = enc["image_grid_thw"]
  n = int(grid.prod()) // proc.merge_size ** 2
  text = text.replace("<|image_pad|>", "<|image_pad|>" * n)  # the processor's expansion
  return np.asarray(tok(text)["input_ids"]), enc["pixel_values"], grid


def _hf_logits(hf, ids, pixels, grid):
  import torch

  model = hf[2]
  img = model.config.image_token_id
  with torch.no_grad():
    out = model(input_ids=torch.tensor(ids[None]), attention_mask=torch.ones(1, len(ids)),
                pixel_values=torch.tensor(pixels), image_grid_thw=torch.tensor(grid),
                mm_token_type_ids=torch.tensor((ids[None] == img).astype(np.int64)))
  return out.logits[0, -1].numpy().astype(np.float64)


def _pair(folder, injection=None, **kw):
  return scorer.PairScorer.from_folder(folder, injection=injection, floor_decimals=None,
                                       prefix_bucket=128, suffix_bucket=64, **kw)


@pytest.mark.parametrize("kind,k", [("retrieval", 5), ("compare", 2)])
def test_prompt_ids_and_probs_equal_transformers(folder, images, hf, kind, k):
  lw = listwise.ListwiseScorer(_pair(folder), template=kind, max_new_tokens=1)
  image, caps = images[0], CORPUS[:k]
  ids, pixels, grid = _hf_inputs(hf, kind, image, caps)
  patches, our_grid = lw.pair.processor(image)
  np.testing.assert_array_equal(our_grid, grid[0])
  np.testing.assert_allclose(patches, pixels, atol=1e-6)
  np.testing.assert_array_equal(lw.prompt_ids(caps, len(patches) // 4), ids)

  ref = _hf_logits(hf, ids, pixels, grid)
  p = np.exp(ref - ref.max())
  p /= p.sum()
  index_ids = [hf[0].convert_tokens_to_ids(str(i + 1)) for i in range(k)]
  res = lw.choose(image, caps)
  np.testing.assert_allclose(res.probs, p[index_ids], rtol=1e-4, atol=0)
  np.testing.assert_allclose(res.entropy, -np.sum(p * np.log(p + 1e-10)), rtol=1e-5)
  assert res.answer_token == int(np.argmax(ref))
  want = listwise.parse_index(hf[0].decode([int(np.argmax(ref))]), k)
  assert res.parsed == (want is not None) and res.index == (want or 0)
  arg = listwise.ListwiseScorer(lw.pair, template=kind, answer="argmax").choose(image, caps)
  assert arg.parsed and arg.index == int(np.argmax(p[index_ids]))


def test_greedy_answer_equals_transformers_generate(folder, images, hf):
  """Decoded answers, several tokens, with HF's repetition penalty: as HF generate (greedy)."""
  import torch

  tok, _, model = hf
  stops = [tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")]
  lw = listwise.ListwiseScorer(_pair(folder, batch_size=2), template="compare",
                               max_new_tokens=6, repetition_penalty=1.3)
  queries = [(1, CORPUS[1:3]), (2, CORPUS[3:5]), (0, CORPUS[0:2])]
  res = lw.choose_many([images[i] for i, _ in queries], [c for _, c in queries])
  for q, (i, caps) in enumerate(queries):
    ids, pixels, grid = _hf_inputs(hf, "compare", images[i], caps)
    with torch.no_grad():
      out = model.generate(
          input_ids=torch.tensor(ids[None]), attention_mask=torch.ones(1, len(ids)),
          pixel_values=torch.tensor(pixels), image_grid_thw=torch.tensor(grid),
          mm_token_type_ids=torch.tensor((ids[None] == model.config.image_token_id).astype(int)),
          do_sample=False, max_new_tokens=6, repetition_penalty=1.3, eos_token_id=stops,
          pad_token_id=stops[1])
    new = out[0, len(ids):].tolist()
    assert res.answer_token[q] == new[0]
    assert res.answer_text[q] == tok.decode(new, skip_special_tokens=True), q
  assert lw.stats["decode_steps"] >= 5


@functools.lru_cache(maxsize=None)
def _forward_fn(model, injection):
  return jax.jit(lambda params, pixels, arrays: model.apply(
      {"params": params}, pixel_values=pixels, injection=injection, output="last", **arrays,
      method="forward"))


def _one_forward(lw, image, captions, injection):
  """One full forward over the whole prompt (no cache), logits of its last position."""
  patches, grid = lw.pair.processor(image)
  ids = lw.prompt_ids(captions, int(grid.prod()) // 4)
  T, N = 192, 256  # fixed padded sizes (masked), one compilation
  assert len(ids) <= T and len(patches) <= N
  padded, mask = np.zeros((1, T), np.int32), np.zeros((1, T), np.int32)
  padded[0, :len(ids)], mask[0, :len(ids)] = ids, 1
  arrays = qwen2_5_vl.prepare_inputs(lw.cfg, padded, grid[None], mask, injection,
                                     pad_patches_to=N)
  pixels = np.zeros((N, patches.shape[1]), np.float32)
  pixels[:len(patches)] = patches
  return np.asarray(_forward_fn(lw.pair.model, injection)(lw.pair.params, pixels, arrays)[0],
                    np.float64)


@pytest.mark.slow  # every query also run alone and as one full forward
def test_batched_queries_equal_one_at_a_time_with_injection(folder, images):
  """Mixed queries (two on one image: a shared prefix; different K), re-injection firing."""
  lw = listwise.ListwiseScorer(_pair(folder, FIRES, batch_size=2), answer="argmax")
  queries = [(0, [0, 1, 2]), (1, [3, 4, 0, 1, 2]), (0, [2, 4]), (2, [1, 3, 0, 4])]
  many = lw.choose_many([images[i] for i, _ in queries],
                        [[CORPUS[j] for j in c] for _, c in queries])
  assert many.probs.shape == (4, 5) and np.isnan(many.probs[0, 3:]).all()
  assert (many.armed_layer == 2).all()
  assert lw.pair.stats["prefix_misses"] == 3  # image 0's prefix computed once
  lone = listwise.ListwiseScorer(_pair(folder, FIRES, prefix_cache_bytes=0), answer="argmax")
  for q, (i, c) in enumerate(queries):
    caps = [CORPUS[j] for j in c]
    one = lone.choose(images[i], caps)
    row = many.row(q)
    np.testing.assert_allclose(row.probs, one.probs, rtol=1e-5, atol=0)
    assert row.index == one.index == int(np.argmax(one.probs))
    full = _one_forward(lw, images[i], caps, FIRES)
    p = np.exp(full - full.max())
    p /= p.sum()
    np.testing.assert_allclose(row.probs, p[lw.index_token_ids(len(c))], rtol=1e-4, atol=0)
  plain = listwise.ListwiseScorer(_pair(folder), answer="argmax").choose(images[0], CORPUS[:3])
  assert np.abs(plain.probs / many.row(0).probs - 1).max() > 1e-4  # injection changed them
  # Greedy answers decoded with re-injection in every forward: batched as alone.
  kw = dict(template="compare", max_new_tokens=4)
  gen = listwise.ListwiseScorer(lw.pair, **kw).choose_many(
      [images[i] for i, _ in queries], [[CORPUS[j] for j in c] for _, c in queries])
  for q, (i, c) in enumerate(queries):
    one = listwise.ListwiseScorer(lone.pair, **kw).choose(images[i], [CORPUS[j] for j in c])
    assert gen.answer_text[q] == one.answer_text and gen.index[q] == one.index


def _reference_decode(lw, image, captions, injection, steps):
  """generate's way with re-injection, from model pieces: one full forward over the prompt
  (K/V kept as it leaves them), then one forward per greedy token against them."""
  import jax.numpy as jnp

  model, v = lw.pair.model, {"params": lw.pair.params}
  patches, grid = lw.pair.processor(image)
  ids = lw.prompt_ids(captions, int(grid.prod()) // 4)[None]
  a = qwen2_5_vl.prepare_inputs(lw.cfg, ids, grid[None], None, injection)
  feats = model.apply(v, patches, *(a[k] for k in ("perm", "rot_hw", "full_seg", "win_seg",
                                                   "unperm")), method="image_features")
  x = model.apply(v, ids, model.apply(v, ids, method="embed"), feats,
                  method="merge_image_tokens")
  out = model.apply(v, x, a["positions"], a["attention_mask"], a["last_idx"], collect_kv=True,
                    injection=injection, memory_bmd=x, memory_mask_bm=a["memory_mask"],
                    output="last", method="decode")
  k, vv = out["kv"]
  mask = jnp.asarray(a["attention_mask"])
  logits, nxt = [np.asarray(out["logits"][0])], int(a["positions"].max()) + 1
  for t in range(steps - 1):
    tok = np.array([[int(np.argmax(logits[-1]))]])
    xt = model.apply(v, tok, method="embed")
    one = np.ones((1, 1), bool)
    o = model.apply(v, xt, np.full((3, 1, 1), nxt + t), one, np.zeros(1, np.int32),
                    prefix_kv=(k, vv), prefix_mask_bp=mask, collect_kv=True, injection=injection,
                    memory_bmd=xt, memory_mask_bm=one, output="last", method="decode")
    k, vv = jnp.concatenate([k, o["kv"][0]], 2), jnp.concatenate([vv, o["kv"][1]], 2)
    mask = jnp.concatenate([mask, jnp.asarray(one)], 1)
    logits.append(np.asarray(o["logits"][0]))
  return logits


@pytest.mark.slow  # decoding with re-injection against a from-pieces reference
def test_decoded_answer_with_reinjection_equals_reference(folder, images):
  """The K/V later tokens attend to are the prompt's as its re-injected forward left them."""
  lw = listwise.ListwiseScorer(_pair(folder, FIRES, batch_size=2), template="compare",
                               max_new_tokens=3)
  got = []
  pick = lw._pick
  lw._pick = lambda lg, seen: (got.append(np.array(lg, np.float64)), pick(lg, seen))[1]
  lw.choose_many([images[1], images[2]], [CORPUS[1:3], CORPUS[3:5]])
  assert len(got) == 6  # two rows, three tokens each (the random model never stops early)
  for q, (i, caps) in enumerate([(1, CORPUS[1:3]), (2, CORPUS[3:5])]):
    want = _reference_decode(lw, images[i], caps, FIRES, 3)
    for t in range(3):
      ours = got[2 * t + q]
      np.testing.assert_allclose(ours, want[t], atol=1e-4 * np.abs(want[t]).max(), rtol=0,
                                 err_msg=f"query {q}, token {t}")


def test_answer_reading_and_fallback(folder):
  lw = listwise.ListwiseScorer(_pair(folder))
  assert listwise.parse_index("2", 5) == 1
  assert listwise.parse_index(" 3.", 5) == 2
  assert listwise.parse_index("The answer is 4", 5) == 3
  assert listwise.parse_index("Answer\n5", 5) == 4
  assert listwise.parse_index("2 or 3", 5) == 1  # the first number
  assert listwise.parse_index("3\nthen 2", 5) == 1  # of the last line
  assert listwise.parse_index("12", 5) is None  # a number, but no candidate's
  assert listwise.parse_index("6", 5) is None and listwise.parse_index("0", 5) is None
  assert listwise.parse_index("True", 5) is None
  np.testing.assert_array_equal(listwise.listwise_order(2, 4), [2, 0, 1, 3])
  ids = lw.index_token_ids(3)
  tok = lw.prompter.tokenizer
  end = tok.convert_tokens_to_ids("<|im_end|>")
  word = tok("fox", add_special_tokens=False)["input_ids"]
  lg = np.zeros((4, lw.cfg.text.vocab_size), np.float32)
  lg[:, ids[1]] = 4.0  # the most likely index token everywhere: "2"
  answers = [[ids[2], end], word + [ids[0], end], [end], [ids[0], ids[1], end]]
  res = lw._read(list(lg), np.full(4, -1), [3, 3, 3, 3], ids, answers)
  np.testing.assert_array_equal(res.index, [2, 0, 0, 0])  # "3"; "fox1"; ""; "12": no index
  np.testing.assert_array_equal(res.parsed, [True, True, False, False])
  assert list(res.answer_text) == ["3", "fox1", "", "12"]
  np.testing.assert_array_equal(res.answer_token, [ids[2], word[0], end, ids[0]])
  arg = listwise.ListwiseScorer(lw.pair, answer="argmax")._read(list(lg), np.full(4, -1),
                                                                 [3, 3, 3, 1], ids, [None] * 4)
  np.testing.assert_array_equal(arg.index, [1, 1, 1, 0])
  assert arg.parsed.all()
  stop = np.zeros((2, lw.cfg.text.vocab_size), np.float32)
  stop[0, end] = stop[1, tok.convert_tokens_to_ids("<|endoftext|>")] = 1.0
  # An end token first: no decode step (there is no K/V to run one against here).
  assert lw._generate(stop, None, [0, 0], [ids[:1]] * 2) == [[end], [int(np.argmax(stop[1]))]]
  p = np.exp(lg[0] - lg[0].max())  # probs: the plain full-vocabulary softmax
  np.testing.assert_allclose(res.probs[0], (p / p.sum())[ids], rtol=1e-6)
  # HF's repetition penalty on tokens already in the sequence: "3" (5 -> 2.5) loses to "1" (3).
  row = np.zeros(lw.cfg.text.vocab_size, np.float32)
  row[ids[2]], row[ids[0]], row[end] = 5.0, 3.0, -1.0
  pen = listwise.ListwiseScorer(lw.pair, repetition_penalty=2.0)
  assert lw._pick(row, np.array([ids[2]])) == ids[2]
  assert pen._pick(row, np.array([ids[2], ids[2]])) == ids[0]
  row[:] = -3.0
  row[ids[0]] = -4.0  # negative logits are multiplied: the seen ones fall below it
  assert pen._pick(row, np.setdiff1d(np.arange(len(row)), [ids[0]])) == ids[0]


def test_generation_repetition_penalty(folder, tmp_path):
  (tmp_path / "generation_config.json").write_text('{"repetition_penalty": 1.05, "top_k": 1}')
  assert listwise.generation_repetition_penalty(str(tmp_path)) == 1.05
  assert listwise.generation_repetition_penalty(str(tmp_path / "none")) == 1.0


def test_bad_arguments_are_clear(folder, images):
  pair = _pair(folder)
  with pytest.raises(ValueError, match="template"):
    listwise.ListwiseScorer(pair, template="pointwise")
  with pytest.raises(ValueError, match="answer"):
    listwise.ListwiseScorer(pair, answer="sample")
  lw = listwise.ListwiseScorer(pair)
  with pytest.raises(ValueError, match="at most 9 candidates"):
    lw.choose(images[0], [f"caption {i}" for i in range(10)])
  with pytest.raises(ValueError, match="one caption list per image"):
    lw.choose_many(images[:2], [CORPUS[:2]])
