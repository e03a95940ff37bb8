"""Mixed query/candidate prompts: the scorer with retllm.prompts equals one full forward per
pair (two images, one, none; with re-injection), and plain pairs keep the match question."""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest

from retformer_jax.data.qwen_preprocess import MATCH_PROMPT
from retformer_jax.demo import qwen as demo_qwen
from retformer_jax.models import qwen2_5_vl
from retformer_jax.models.qwen_injection import InjectionConfig
from retformer_jax.retllm import item_scoring, prompts, scorer
from retformer_jax.retllm.benchmarks.items import Item

CORPUS = ["a red fox jumps over the fence", "two dogs play in the snow", "a man rides a bike",
          "query image candidate text match does the"]
INJ = InjectionConfig(enabled=True, layer_lo=0, layer_hi=3)


def test_templates():
  img, txt = Item(image="a.jpg"), Item(text="a dog <|image_1|>")
  both = Item(text="<|image_1|>\nRepresent it", image="b.jpg")
  assert prompts.is_plain_pair(img, txt) and prompts.is_plain_pair(txt, img)
  assert not prompts.is_plain_pair(both, txt) and not prompts.is_plain_pair(img, img)
  assert prompts.mixed_content(both, img) == (
      ("text", "Query image"), ("image", ""), ("text", "Candidate image"), ("image", ""),
      ("text", "Does the candidate image match the query image and the query text: "
               "<Represent it>? Please directly output True or False"))
  assert prompts.mixed_content(txt, Item(text="a cat")) == ((
      "text", "Does the candidate text: <a cat> match the query text: <a dog>? Please "
              "directly output True or False"),)
  with pytest.raises(ValueError, match="neither text nor an image"):
    prompts.mixed_content(Item(), txt)


@pytest.fixture(scope="module")
def sc(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("prompts") / "qwen")
  demo_qwen.build_demo_qwen(path, CORPUS, min_pixels=4 * 784, max_pixels=8 * 784, seed=2)
  return scorer.PairScorer.from_folder(path, injection=INJ, floor_decimals=None, batch_size=4,
                                       prefix_bucket=64, suffix_bucket=32)


@functools.lru_cache(maxsize=None)
def _forward_fn(model, injection):
  return jax.jit(lambda params, pixels, arrays: model.apply(
      {"params": params}, pixel_values=pixels, injection=injection, output="last", **arrays,
      method="forward"))


def _full_forward(sc, images, ids):
  """One forward over the whole prompt, as the reference runs each pair."""
  grids, patches = [], []
  for im in images:
    p, g = sc.processor(im)
    patches.append(p)
    grids.append(g)
  T, N = 256, 256
  padded = np.zeros((1, T), np.int32)
  padded[0, :len(ids)] = ids
  mask = np.zeros((1, T), np.int32)
  mask[0, :len(ids)] = 1
  arrays = qwen2_5_vl.prepare_inputs(sc.cfg, padded, np.stack(grids) if grids else None, mask,
                                     INJ, pad_patches_to=N)
  pixels = np.zeros((N, sc.processor(np.zeros((8, 8, 3), np.uint8))[0].shape[1]), np.float32)
  if patches:
    cat = np.concatenate(patches)
    pixels[:len(cat)] = cat
  logits = np.asarray(_forward_fn(sc.model, INJ)(sc.params, pixels, arrays)[0], np.float64)
  p = np.exp(logits - logits.max())
  p /= p.sum()
  return p[sc.prompter.true_id], -np.sum(p * np.log(p + 1e-10))


@pytest.mark.slow
def test_mixed_pairs_equal_full_forwards(sc):
  rng = np.random.default_rng(0)
  arrays = [rng.integers(0, 256, (60 + 10 * i, 80, 3), dtype=np.uint8) for i in range(3)]
  image_items = [Item(image=lambda a=a: a) for a in arrays]
  queries = [Item(text="<|image_1|>\nthe fox", image=image_items[0].image),
             Item(text=CORPUS[1]), image_items[1]]
  cands = [image_items[2], Item(text=CORPUS[2]),
           Item(text="<|image_1|> dogs", image=image_items[1].image)]
  pairs = [(0, 0), (0, 1), (0, 2), (2, 0), (1, 0), (2, 1), (1, 2)]
  p, e = item_scoring.score(sc, queries, cands, pairs)
  ip = prompts.ItemPrompter(sc.prompter)
  for k, (q, c) in enumerate(pairs):
    qi, ci = queries[q], cands[c]
    if prompts.is_plain_pair(qi, ci):
      image = (qi if qi.has_image else ci).load_image()
      text = (ci if qi.has_image else qi).plain_text
      grid = sc.processor(image)[1]
      ids, shown = sc.prompter.pair_ids(text, int(grid.prod()) // 4), [image]
    else:
      shown = [x.load_image() for x in (qi, ci) if x.has_image]
      ids = ip.pair_ids(prompts.mixed_content(qi, ci),
                        [int(sc.processor(x)[1].prod()) // 4 for x in shown])
    want_p, want_e = _full_forward(sc, shown, ids)
    np.testing.assert_allclose(p[k], want_p, atol=2e-6, rtol=1e-4)
    np.testing.assert_allclose(e[k], want_e, atol=2e-5, rtol=1e-5)
  assert sc.stats["reinject_rows"] > 0  # the injected rerun path was exercised too
  # Two texts and no image: scored too (no vision input at all).
  p, e = item_scoring.score(sc, [Item(text=CORPUS[0])], [Item(text=CORPUS[1])], [(0, 0)])
  assert 0 < p[0] < 1 and np.isfinite(e[0])


@pytest.mark.slow
def test_one_image_content_with_the_match_question_is_the_plain_score(sc):
  rng = np.random.default_rng(1)
  image = rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)
  plain = sc.score_image_to_text(image, CORPUS[:3])
  content = [(("image", ""), ("text", MATCH_PROMPT.format(caption=c))) for c in CORPUS[:3]]
  same = sc.score_pairs([(image,)], content, [(0, j) for j in range(3)],
                        prompter=prompts.ItemPrompter(sc.prompter))
  np.testing.assert_allclose(plain.p_true, same.p_true, rtol=1e-6)  # other prefix cut


@pytest.mark.slow
def test_plain_items_are_scored_as_the_caption_pipeline_scores_them(sc):
  """SugarCrepe pointwise / classification pairs (an image vs a text) through item_scoring are
  the scorer's own image->text scores, bit for bit."""
  rng = np.random.default_rng(3)
  image = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
  p, e = item_scoring.score(sc, [Item(image=lambda: image)], [Item(text=c) for c in CORPUS],
                            [(0, j) for j in range(len(CORPUS))])
  want = sc.score_image_to_text(image, CORPUS)
  np.testing.assert_array_equal(p, np.float32(want.p_true))
  np.testing.assert_array_equal(e, np.float32(want.entropy))
