"""Listwise choice: the MLLM sees one image and K numbered captions and names the matching one.

    pair = PairScorer.from_folder("Qwen2.5-VL-7B-Instruct", dtype="bfloat16", injection=inj)
    lw = ListwiseScorer(pair)                                  # image->text prompt
    res = lw.choose(image, captions)                           # res.index: int, res.probs: [K]
    many = lw.choose_many(images, caption_lists)               # index [n], probs [n, Kmax]
    sugar = ListwiseScorer(pair, template="compare")           # SugarCrepe: [negative, positive]

The released code (alivecat05/RETLLM) has two listwise prompts, both a chat [image, text] with
the generation prompt appended, captions numbered from 1:

- "retrieval", its image->text driver (Codes/main_retrieval_v2.py:117 calls
  Qwen_fine_reasoner_Retrieval_v2, Codes/Qwen_vl.py:1525-1539):
  "What is in this picture?\\nChoose the most relevant sentence of the image from the following
  options: 1: {c1}, 2: {c2}. You should directly output the answer index, for example: 1."
- "compare", its SugarCrepe driver (main_eval.py:50-55 calls Qwen_fine_compare with the
  captions [negative, positive], Codes/Qwen_vl.py:2946-2959):
  "What is in the picture\\nChoose the most relevant description from the following options :
  \\n1: {c1}\\n, 2: {c2}\\n. You should directly output the answer index, for example: 1."

There the answer is text: `model.generate`, then the first number of the output's last line,
kept if it is one of "1".."K" (Qwen_vl.py:1579-1585 and 2998-3002). When it does not parse, the
image->text driver keeps CLIP's first candidate (main_retrieval_v2.py:121) and SugarCrepe counts
the item wrong (main_eval.py:53-54), which is what choosing index 0 (the negative) gives.

Ours reads the first answer position: the full-vocabulary softmax of the last prompt position's
logits, `probs[k]` at the token of index k + 1. `answer="greedy"` (default) takes the greedy
token over the whole vocabulary (generate's first token, made deterministic), decodes it and
parses it as the reference parses its text; `answer="argmax"` takes the most
likely index token (never unparsed). Both need every index to be one token (Qwen splits
numbers into digits: K <= 9). The difference with the reference's generated text: its answer
could start with other words ("The answer is 2") or continue with a digit ("12"); ours only
sees the first token. Unparsed answers give index 0 and parsed=False.

Visual re-injection follows the pair scorer's `injection`. The released module turns it on at
import (Multi_layers_fusion(..., vision_retracing_method='adapt'), Qwen_vl.py:3084), so the
SugarCrepe driver runs with it; drivers may switch it off again: main_retrieval_v2.py:246-255
(Flickr30k / COCO image->text) passes 'default' (off), main_retrieval_long.py:289-298 and
main_retrieval_v2_topk.py:263-272 pass 'adapt' (on). The first answer token comes from
generate's prefill forward, where injection acts as in the pointwise score (trigger at the last
position, memory = the input embeddings), so the pair scorer's exact rerun applies unchanged.

Same work discipline as PairScorer: its weights, prompter, image processor, vision-feature cache
and prompt-prefix K/V cache (the prefix is the prompt up to the first caption: system, image,
instruction head, so every query on the same image shares it, across calls too); the K captions
run as one suffix per query, queries batched; re-injected rows rerun from the armed layer.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import json
import os
import re
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from retformer_jax.models import qwen_layout
from retformer_jax.models.qwen2_5_vl import QwenVL
from retformer_jax.models.qwen_injection import ArmState, InjectionConfig
from retformer_jax.parallel import mesh as mesh_lib
from retformer_jax.retllm import scorer as scorer_lib


def retrieval_text(captions: Sequence[str]) -> str:
  """The image->text listwise prompt (Qwen_vl.py:1525-1539)."""
  choices = ", ".join(f"{i + 1}: {c}" for i, c in enumerate(captions))
  return ("What is in this picture?" + "\n" +
          f"Choose the most relevant sentence of the image from the following options: "
          f"{choices}. You should directly output the answer index, for example: 1.")


def compare_text(captions: Sequence[str]) -> str:
  """The SugarCrepe listwise prompt (Qwen_vl.py:2946-2959): each option ends with a newline."""
  choices = ", ".join(f"{i + 1}: {c}\n" for i, c in enumerate(captions))
  return ("What is in the picture" + "\n" +
          f"Choose the most relevant description from the following options : \n{choices}. "
          f"You should directly output the answer index, for example: 1.")


TEMPLATES: dict[str, Callable[[Sequence[str]], str]] = {
    "retrieval": retrieval_text, "compare": compare_text}
ANSWERS = ("greedy", "argmax")
_NUMBER = re.compile(r"\d+\.\d+|\d+")


def parse_index(text: str, k: int) -> int | None:
  """0-based index named by an answer text, read as the reference does (None: no index)."""
  numbers = _NUMBER.findall(text.strip().split("\n")[-1])
  if numbers and numbers[0] in {str(i + 1) for i in range(k)}:
    return int(numbers[0]) - 1
  return None


def generation_repetition_penalty(folder: str) -> float:
  """The repetition_penalty of a checkpoint's generation_config.json (1.0 when it sets none),
  which `generate` applies in the released code."""
  file = os.path.join(folder, "generation_config.json")
  if not os.path.exists(file):
    return 1.0
  with open(file) as f:
    return float(json.load(f).get("repetition_penalty") or 1.0)


def listwise_order(index: int, k: int) -> np.ndarray:
  """Candidate order after a listwise choice: the chosen one, then the others as given."""
  return np.asarray([index] + [j for j in range(k) if j != index], np.int64)


@dataclasses.dataclass(frozen=True)
class ListwiseResult:
  """One query (from `choose`: scalars, probs [K]) or n queries (`choose_many`: arrays [n],
  probs [n, Kmax] NaN past each query's K)."""
  index: np.ndarray | int  # chosen candidate, 0-based; 0 when the answer did not parse
  probs: np.ndarray  # full-vocabulary softmax of the first answer position at tokens "1".."K"
  parsed: np.ndarray | bool  # the answer named a candidate
  answer_token: np.ndarray | int  # the greedy token over the whole vocabulary
  entropy: np.ndarray | float  # entropy of that full-vocabulary softmax
  armed_layer: np.ndarray | int  # the re-injected layer (-1: none / injection off)

  def row(self, i: int) -> "ListwiseResult":
    k = int(np.sum(~np.isnan(self.probs[i])))
    return ListwiseResult(index=int(self.index[i]), probs=self.probs[i, :k].copy(),
                          parsed=bool(self.parsed[i]), answer_token=int(self.answer_token[i]),
                          entropy=float(self.entropy[i]), armed_layer=int(self.armed_layer[i]))


class ListwiseScorer:
  """Listwise choice among K captions for an image; see the module docstring.

  template: "retrieval" (image->text driver), "compare" (SugarCrepe) or a function captions ->
  user text. answer: "greedy" (the reference's generated answer, first token) or "argmax" (the
  most likely index token). repetition_penalty: applied, as HF generate does, to the logits of
  tokens present in the prompt before the greedy pick (1.0: none); it changes neither probs nor
  the argmax among index tokens (every index token is in the prompt).
  """

  def __init__(self, pair_scorer: scorer_lib.PairScorer, *, template="retrieval",
               answer: str = "greedy", repetition_penalty: float = 1.0):
    if isinstance(template, str):
      if template not in TEMPLATES:
        raise ValueError(f"template={template!r}: use one of {sorted(TEMPLATES)} or a function "
                         "captions -> prompt text.")
      template = TEMPLATES[template]
    if answer not in ANSWERS:
      raise ValueError(f"answer={answer!r}: use one of {ANSWERS}.")
    if repetition_penalty <= 0:
      raise ValueError(f"repetition_penalty={repetition_penalty} must be > 0 (1.0: none).")
    self.pair = pair_scorer
    self.template = template
    self.answer = answer
    self.repetition_penalty = float(repetition_penalty)
    self.prompter = pair_scorer.prompter
    self.cfg = pair_scorer.cfg
    self._index_ids: list[int] = []
    self._heads: dict[int, np.ndarray] = {}  # K -> prompt head with one image token
    self.stats: collections.Counter = collections.Counter()

  # ------------------------------------------------------------------ prompts
  def prompt_text(self, captions: Sequence[str]) -> str:
    """The chat-rendered prompt (one image placeholder) for these candidate captions."""
    messages = [{"role": "user", "content": [
        {"type": "image"}, {"type": "text", "text": self.template(list(captions))}]}]
    return self.prompter.tokenizer.apply_chat_template(
        messages, chat_template=self.prompter.chat_template, tokenize=False,
        add_generation_prompt=True)

  def prompt_ids(self, captions: Sequence[str], num_image_tokens: int) -> np.ndarray:
    """int32 ids, the image placeholder expanded to `num_image_tokens` copies."""
    img = self.cfg.image_token_id
    ids = np.asarray(self.prompter.tokenizer(self.prompt_text(captions),
                                             add_special_tokens=False)["input_ids"])
    where = np.flatnonzero(ids == img)
    if where.size != 1:
      raise ValueError(f"The chat template gave {where.size} image placeholders (token {img}); "
                       "it must give exactly one.")
    i = int(where[0])
    return np.concatenate([ids[:i], np.full(num_image_tokens, img), ids[i + 1:]]).astype(np.int32)

  def index_token_ids(self, k: int) -> np.ndarray:
    """Token ids of the answers "1".."k"; each index must be a single token."""
    tok = self.prompter.tokenizer
    while len(self._index_ids) < k:
      label = str(len(self._index_ids) + 1)
      ids = tok(label, add_special_tokens=False)["input_ids"]
      if len(ids) != 1:
        raise ValueError(f"{k} candidates: the index {label!r} is {len(ids)} tokens for this "
                         f"tokenizer; listwise choice reads one token per index, so use at most "
                         f"{len(self._index_ids)} candidates.")
      self._index_ids.append(int(ids[0]))
    return np.asarray(self._index_ids[:k], np.int64)

  # ------------------------------------------------------------------ public API
  def choose(self, image: np.ndarray, captions: Sequence[str]) -> ListwiseResult:
    """The candidate caption the MLLM names for one image."""
    return self.choose_many([image], [list(captions)]).row(0)

  def choose_many(self, images: Sequence[np.ndarray],
                  caption_lists: Sequence[Sequence[str]]) -> ListwiseResult:
    """One choice per (images[q], caption_lists[q]); queries batched, prefixes shared."""
    if len(images) != len(caption_lists):
      raise ValueError(f"choose_many got {len(images)} images and {len(caption_lists)} caption "
                       "lists; give one caption list per image.")
    n = len(images)
    if n == 0:
      raise ValueError("choose_many needs at least one query.")
    ks = [len(c) for c in caption_lists]
    if min(ks) < 1:
      raise ValueError("Every query needs at least one candidate caption.")
    index_ids = self.index_token_ids(max(ks))
    sc = self.pair
    keys = [scorer_lib.image_key(np.asarray(im)) for im in images]
    full, cuts, groups = {}, {}, {}
    for q in range(n):
      full[q] = self._arrays(caption_lists[q], sc._grid(keys[q], images[q]))
      cut = self._prefix_len(full[q][0], ks[q])
      pkey = (keys[q], hashlib.sha1(full[q][0][:cut].tobytes()).hexdigest())
      groups.setdefault(pkey, []).append(q)
      cuts[pkey] = cut
    logits_rows: dict[int, np.ndarray] = {}
    armed = np.full(n, -1, np.int64)
    order = list(groups)
    for start in range(0, len(order), sc.batch_size):
      window = order[start:start + sc.batch_size]
      firsts = {pk: groups[pk][0] for pk in window}
      entries = sc._prefixes(window, {pk: full[firsts[pk]] for pk in window}, cuts,
                             {pk: images[firsts[pk]] for pk in window})
      rows = [(g, q) for g, pk in enumerate(window) for q in groups[pk]]
      feats = {pk: sc._suffix_features(pk[0], images[firsts[pk]], full[firsts[pk]][1][cuts[pk]:])
               for pk in window}
      for r in range(0, len(rows), sc.batch_size):
        part = rows[r:r + sc.batch_size]
        lg, a = self._extend(entries, [g for g, _ in part],
                             [scorer_lib._slice(full[q], cuts[window[g]], None) for g, q in part],
                             [feats[window[g]] for g, _ in part])
        for (_, q), row, layer in zip(part, lg, a):
          logits_rows[q], armed[q] = row, layer
    self.stats["queries"] += n
    return self._read([logits_rows[q] for q in range(n)], armed, ks, index_ids,
                      [full[q][0] for q in range(n)])

  # ------------------------------------------------------------------ internals
  def _read(self, logits, armed, ks, index_ids, prompts) -> ListwiseResult:
    """Index-token probabilities, entropy and the answer of every query from its logits."""
    n, kmax = len(logits), max(ks)
    probs = np.full((n, kmax), np.nan)
    index, tokens = np.zeros(n, np.int64), np.zeros(n, np.int64)
    parsed, entropy = np.zeros(n, bool), np.zeros(n)
    for q, lg in enumerate(logits):
      lg = np.asarray(lg, np.float64)
      p = np.exp(lg - lg.max())
      p /= p.sum()
      entropy[q] = -np.sum(p * np.log(p + 1e-10))
      probs[q, :ks[q]] = p[index_ids[:ks[q]]]
      if self.answer == "argmax":
        index[q], parsed[q] = int(np.argmax(probs[q, :ks[q]])), True
        tokens[q] = index_ids[index[q]]
        continue
      if self.repetition_penalty != 1.0:
        seen = np.unique(prompts[q])
        lg = lg.copy()
        lg[seen] = np.where(lg[seen] < 0, lg[seen] * self.repetition_penalty,
                            lg[seen] / self.repetition_penalty)
      tokens[q] = int(np.argmax(lg))
      pick = parse_index(self.prompter.tokenizer.decode([int(tokens[q])]), ks[q])
      parsed[q] = pick is not None
      index[q] = pick if pick is not None else 0
    self.stats["unparsed"] += int(n - parsed.sum())
    return ListwiseResult(index=index, probs=probs, parsed=parsed, answer_token=tokens,
                          entropy=entropy, armed_layer=armed)

  def _arrays(self, captions, grid):
    """(ids [T], feature index [T] (-1: text), rotary positions [3, T]) of one query."""
    ids = self.prompt_ids(captions, self.pair._num_image_tokens(grid))
    is_img = ids == self.cfg.image_token_id
    fidx = np.where(is_img, np.cumsum(is_img) - 1, -1).astype(np.int32)
    pos = qwen_layout.rope_index(ids[None], grid[None], image_token_id=self.cfg.image_token_id,
                                 merge=self.cfg.vision.merge_size)[:, 0]
    return ids, fidx, pos

  def _prefix_len(self, ids: np.ndarray, k: int) -> int:
    """Tokens before the first caption (the head no caption changes), at least one left."""
    img = self.cfg.image_token_id
    head = self._heads.get(k)
    if head is None:
      probes = [self.prompt_ids([p] * k, 1) for p in scorer_lib._PROBES]
      head = self._heads[k] = probes[0][:scorer_lib._common_len(probes)]
    at = np.flatnonzero(head == img)
    if at.size == 1:
      n_img = int((ids == img).sum())
      head = np.concatenate([head[:at[0]], np.full(n_img, img, np.int32), head[at[0] + 1:]])
    return min(scorer_lib._common_len([ids, head]), len(ids) - 1)

  def _extend(self, entries, groups, suffixes, feats_list):
    """Last-position logits [n, V] of suffix rows against their prefixes, re-injected rows
    rerun from their armed layer; and the armed layers."""
    sc = self.pair
    n = len(suffixes)
    B = sc._batch(1 << (n - 1).bit_length())
    S = scorer_lib._bucket(max(len(a[0]) for a in suffixes), sc.suffix_bucket)
    cache = sc._stack(entries)
    ids, fidx, pos, mask, frows = sc._pack(suffixes, feats_list, B, S)
    last, rows = np.zeros(B, np.int32), np.zeros(B, np.int32)
    last[:n] = [len(a[0]) - 1 for a in suffixes]
    rows[:n] = groups
    lg, a, hid = self._run("extend", sc.params, cache, sc._on_data(rows), ids, frows, fidx, pos,
                           mask, sc._on_data(last))
    lg, a = np.array(lg, np.float32)[:n], np.asarray(a)[:n]
    self.stats["suffix_tokens"] += sum(len(x[0]) for x in suffixes)
    self.stats["extend_rows"] += n
    for layer in sorted(set(a[a >= 0].tolist())):
      sel = np.flatnonzero(a == layer)
      lg[sel] = self._reinject(cache, layer, hid, sel, [groups[i] for i in sel],
                               [suffixes[i] for i in sel], [feats_list[i] for i in sel], S)
      self.stats["reinject_rows"] += len(sel)
    return lg, a

  def _reinject(self, cache, layer, hid, sel, groups, suffixes, feats_list, S):
    sc = self.pair
    n = len(sel)
    B = sc._batch(1 << (n - 1).bit_length())
    ids, fidx, pos, mask, frows = sc._pack(suffixes, feats_list, B, S)
    last, rows, take = (np.zeros(B, np.int32) for _ in range(3))
    last[:n] = [len(a[0]) - 1 for a in suffixes]
    rows[:n] = groups
    take[:n] = sel
    h = hid[layer - sc.armable.start][jnp.asarray(take)]
    lg = self._run("reinject", sc.params, layer, cache, sc._on_data(rows), h, ids, frows, fidx,
                   pos, mask, sc._on_data(last))
    return np.asarray(lg, np.float32)[:n]

  def _run(self, name: str, *args):
    sc = self.pair
    key = (sc.mesh, sc.axis_rules)
    armable = (sc.armable.start, sc.armable.stop)
    if name == "extend":
      fn = _extend_fn(sc.model, sc.injection, armable, *key)
    else:
      fn = _reinject_fn(sc.model, sc.injection, args[1], armable, *key)
      args = args[:1] + args[2:]
    if sc.mesh is None:
      return fn(*args)
    with mesh_lib.activate(sc.mesh, sc.axis_rules):
      return fn(*args)


# Jitted steps as the pair scorer's, returning the last position's logits (every token is read).
@functools.lru_cache(maxsize=16)
def _extend_fn(model: QwenVL, inj: InjectionConfig | None, armable: tuple[int, int], mesh,
               axis_rules):
  lo, hi = armable

  def extend(params, cache, rows, ids, frows, fidx, pos, mask, last):
    x = scorer_lib._embed(model, params, ids, frows, fidx)
    kv = (cache["k"][:, rows], cache["v"][:, rows])
    out = model.apply({"params": params}, x, pos, mask, last, prefix_kv=kv,
                      prefix_mask_bp=cache["mask"][rows], injection=inj, trigger_only=True,
                      collect_hidden=hi > lo, output="last", method="decode")
    hid = out["hiddens"][lo:hi] if hi > lo else None
    return out["logits"], out["arm_state"].armed_layer, hid
  return jax.jit(extend)


@functools.lru_cache(maxsize=64)
def _reinject_fn(model: QwenVL, inj: InjectionConfig, layer: int, armable: tuple[int, int],
                 mesh, axis_rules):
  img_id = model.cfg.image_token_id
  at = layer - armable[0]

  def reinject(params, cache, rows, h_suffix, ids, frows, fidx, pos, mask, last):
    x = scorer_lib._embed(model, params, ids, frows, fidx)
    pmask = cache["mask"][rows]
    full_mask = jnp.concatenate([pmask, mask], 1)
    if inj.memory == "all":
      mem_mask = full_mask
    else:
      mem_mask = jnp.concatenate([cache["image"][rows], (ids == img_id) & mask], 1)
    B = ids.shape[0]
    state = ArmState(jnp.ones((B,), bool), jnp.ones((B,), bool),
                     jnp.full((B,), layer, jnp.int32))
    out = model.apply(
        {"params": params}, jnp.concatenate([cache["hidden"][at][rows], h_suffix], 1),
        jnp.concatenate([cache["pos"][:, rows], pos], 2), full_mask, last + pmask.shape[1],
        start=layer, injection=inj, arm_state=state,
        memory_bmd=jnp.concatenate([cache["embeds"][rows], x], 1), memory_mask_bm=mem_mask,
        output="last", method="decode")
    return out["logits"]
  return jax.jit(reinject)
