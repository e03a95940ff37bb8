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

Ours is deterministic. `probs[k]` is the full-vocabulary softmax of the last prompt position's
logits at the token of index k + 1 (each index must be one token: Qwen splits numbers into
digits, so K <= 9). `answer="greedy"` (default) decodes greedily (generate with do_sample off)
until <|im_end|> / <|endoftext|> or `max_new_tokens` (the reference's: 77 for "retrieval",
Qwen_vl.py:1568-1571; generate's default 20 for "compare"), each further token one cached
forward as in generate, and parses the text as the reference does; `max_new_tokens=1` reads
the first token only. `answer="argmax"` takes the most likely index token at the first answer
position (never unparsed). The reference's generate follows the checkpoint's
generation_config.json: where that samples, ours takes the most likely token instead; its
`repetition_penalty` (HF semantics) is an option here (`generation_repetition_penalty` reads
it). Unparsed answers give index 0 and parsed=False.

Visual re-injection follows the pair scorer's `injection`. The released module turns it on at
import (Multi_layers_fusion(..., vision_retracing_method='adapt'), Qwen_vl.py:3084), so the
SugarCrepe driver runs with it; drivers may switch it off again: main_retrieval_v2.py:246-255
(Flickr30k / COCO image->text) passes 'default' (off), main_retrieval_long.py:289-298 and
main_retrieval_v2_topk.py:263-272 pass 'adapt' (on). The first answer token comes from
generate's prefill forward, where injection acts as in the pointwise score (trigger at the last
position, memory = the input embeddings), so the pair scorer's exact rerun applies unchanged;
each later token is a forward of its own there (the trigger watches that token, an armed
layer's memory is that token's embedding, the prompt's K/V are the prefill's), and here too.

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
  answer_token: np.ndarray | int  # the answer's first token
  answer_text: np.ndarray | str  # the decoded answer (special tokens skipped), as parsed
  entropy: np.ndarray | float  # entropy of the first answer position's full softmax
  armed_layer: np.ndarray | int  # the prompt forward's re-injected layer (-1: none / off)

  def row(self, i: int) -> "ListwiseResult":
    k = int(np.sum(~np.isnan(self.probs[i])))
    return ListwiseResult(index=int(self.index[i]), probs=self.probs[i, :k].copy(),
                          parsed=bool(self.parsed[i]), answer_token=int(self.answer_token[i]),
                          answer_text=str(self.answer_text[i]), entropy=float(self.entropy[i]),
                          armed_layer=int(self.armed_layer[i]))


class ListwiseScorer:
  """Listwise choice among K captions for an image; see the module docstring.

  template: "retrieval" (image->text driver), "compare" (SugarCrepe) or a function captions ->
  user text. answer: "greedy" (the reference's generated answer, decoded greedily) or "argmax"
  (the most likely index token at the first answer position). max_new_tokens: greedy answer
  length bound (None: the reference's, 77 for "retrieval", 20 otherwise, generate's default;
  decoding stops at <|im_end|> / <|endoftext|>; 1: the first token only, no decode step).
  repetition_penalty: applied, as HF generate does, to the logits of tokens already in the
  sequence before each greedy pick (1.0: none); probs are never penalised.
  """

  def __init__(self, pair_scorer: scorer_lib.PairScorer, *, template="retrieval",
               answer: str = "greedy", max_new_tokens: int | None = None,
               repetition_penalty: float = 1.0):
    name = template if isinstance(template, str) else None
    if isinstance(template, str):
      if template not in TEMPLATES:
        raise ValueError(f"template={template!r}: use one of {sorted(TEMPLATES)} or a function "
                         "captions -> prompt text.")
      template = TEMPLATES[template]
    if answer not in ANSWERS:
      raise ValueError(f"answer={answer!r}: use one of {ANSWERS}.")
    if repetition_penalty <= 0:
      raise ValueError(f"repetition_penalty={repetition_penalty} must be > 0 (1.0: none).")
    if max_new_tokens is None:
      max_new_tokens = _MAX_NEW_TOKENS.get(name, 20)
    if max_new_tokens < 1:
      raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1.")
    self.pair = pair_scorer
    self.template = template
    self.answer = answer
    self.max_new_tokens = int(max_new_tokens)
    self.repetition_penalty = float(repetition_penalty)
    self.prompter = pair_scorer.prompter
    self.cfg = pair_scorer.cfg
    tok = self.prompter.tokenizer
    self._eos = {int(i) for i in (tok.convert_tokens_to_ids(t) for t in _EOS)
                 if i is not None and i != getattr(tok, "unk_token_id", None)}
    self._index_ids: list[int] = []
    self._heads: dict[int, np.ndarray] = {}  # K -> prompt head with one image token
    self.stats: collections.Counter = collections.Counter()

  @property
  def _decodes(self) -> bool:
    return self.answer == "greedy" and self.max_new_tokens > 1

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
    first: dict[int, np.ndarray] = {}
    answers: dict[int, list[int]] = {}
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
        qs = [q for _, q in part]
        lg, a, kv = self._extend(entries, [g for g, _ in part],
                                 [scorer_lib._slice(full[q], cuts[window[g]], None)
                                  for g, q in part],
                                 [feats[window[g]] for g, _ in part])
        if self.answer == "greedy":
          seqs = self._generate(lg, kv, [int(full[q][2].max()) + 1 for q in qs],
                                [full[q][0] for q in qs])
          answers.update(zip(qs, seqs))
        for q, row, layer in zip(qs, lg, a):
          first[q], armed[q] = row, layer
    self.stats["queries"] += n
    return self._read([first[q] for q in range(n)], armed, ks, index_ids,
                      [answers.get(q) for q in range(n)])

  # ------------------------------------------------------------------ internals
  def _pick(self, logits: np.ndarray, seen: np.ndarray) -> int:
    """The greedy token, after HF's repetition penalty on the tokens already in the sequence."""
    if self.repetition_penalty != 1.0:
      seen = np.unique(seen)
      logits = np.array(logits, np.float32)
      logits[seen] = np.where(logits[seen] < 0, logits[seen] * self.repetition_penalty,
                              logits[seen] / self.repetition_penalty)
    return int(np.argmax(logits))

  def _generate(self, logits, kv, next_pos, prompts) -> list[list[int]]:
    """Greedy answers of a batch of rows from their first-position logits, one decode step
    per further token against the prompt's K/V, until an end token or max_new_tokens."""
    n, G = len(prompts), self.max_new_tokens
    seqs: list[list[int]] = [[] for _ in range(n)]
    done = np.zeros(n, bool)
    state = None
    for t in range(G):
      for i in np.flatnonzero(~done):
        tok = self._pick(logits[i], np.concatenate([prompts[i], np.asarray(seqs[i], np.int64)]))
        seqs[i].append(tok)
        done[i] = tok in self._eos
      if done.all() or t == G - 1:
        break
      sc = self.pair
      B = kv["mask"].shape[0]
      ids, pos = np.zeros(B, np.int32), np.zeros((3, B, 1), np.int32)
      ids[:n] = [s[-1] for s in seqs]
      pos[:, :n, 0] = np.asarray(next_pos) + t
      if state is None:
        L, _, _, H, D = kv["k"].shape
        state = (jnp.zeros((L, B, G, H, D), kv["k"].dtype),
                 jnp.zeros((L, B, G, H, D), kv["v"].dtype), jnp.zeros((B, G), bool))
      out = self._run("step", sc.params, kv, state, sc._on_data(ids),
                      sc._on_data(pos, axis=1), jnp.int32(t))
      logits, state = np.asarray(out[0], np.float32)[:n], out[1:]
      self.stats["decode_steps"] += 1
      self.stats["decode_rows"] += int((~done).sum())
    return seqs

  def _read(self, logits, armed, ks, index_ids, answers) -> ListwiseResult:
    """Index-token probabilities, entropy and the parsed answer of every query."""
    n, kmax = len(logits), max(ks)
    probs = np.full((n, kmax), np.nan)
    index, tokens = np.zeros(n, np.int64), np.zeros(n, np.int64)
    parsed, entropy = np.zeros(n, bool), np.zeros(n)
    texts = np.empty(n, object)
    tok = self.prompter.tokenizer
    for q, lg in enumerate(logits):
      lg = np.asarray(lg, np.float64)
      p = np.exp(lg - lg.max())
      p /= p.sum()
      entropy[q] = -np.sum(p * np.log(p + 1e-10))
      probs[q, :ks[q]] = p[index_ids[:ks[q]]]
      if self.answer == "argmax":
        index[q], parsed[q] = int(np.argmax(probs[q, :ks[q]])), True
        tokens[q] = index_ids[index[q]]
        texts[q] = str(index[q] + 1)
        continue
      tokens[q] = answers[q][0]
      texts[q] = tok.decode(answers[q], skip_special_tokens=True)
      pick = parse_index(texts[q], ks[q])
      parsed[q] = pick is not None
      index[q] = pick if pick is not None else 0
    self.stats["unparsed"] += int(n - parsed.sum())
    return ListwiseResult(index=index, probs=probs, parsed=parsed, answer_token=tokens,
                          answer_text=texts, entropy=entropy, armed_layer=armed)

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
    """Last-position logits [n, V] of suffix rows against their prefixes (re-injected rows rerun
    from their armed layer), the armed layers, and (when answers are decoded) the K/V of every
    row's whole prompt as that forward left it: {k, v: [L, B, P + S, ...], mask [B, P + S]}."""
    sc = self.pair
    n = len(suffixes)
    B = sc._batch(1 << (n - 1).bit_length())
    S = scorer_lib._bucket(max(len(a[0]) for a in suffixes), sc.suffix_bucket)
    cache = sc._stack(entries)
    ids, fidx, pos, mask, frows = sc._pack(suffixes, feats_list, B, S)
    last, rows = np.zeros(B, np.int32), np.zeros(B, np.int32)
    last[:n] = [len(a[0]) - 1 for a in suffixes]
    rows[:n] = groups
    rows = sc._on_data(rows)
    lg, a, hid, kv = self._run("extend", sc.params, cache, rows, ids, frows, fidx, pos, mask,
                               sc._on_data(last))
    lg, a = np.array(lg, np.float32)[:n], np.asarray(a)[:n]
    self.stats["suffix_tokens"] += sum(len(x[0]) for x in suffixes)
    self.stats["extend_rows"] += n
    if kv is not None:
      kv = {"k": jnp.concatenate([cache["k"][:, rows], kv[0]], 2),
            "v": jnp.concatenate([cache["v"][:, rows], kv[1]], 2),
            "mask": jnp.concatenate([cache["mask"][rows], jnp.asarray(mask, bool)], 1)}
    for layer in sorted(set(a[a >= 0].tolist())):
      sel = np.flatnonzero(a == layer)
      lg[sel], rkv = self._reinject(cache, layer, hid, sel, [groups[i] for i in sel],
                                    [suffixes[i] for i in sel], [feats_list[i] for i in sel], S)
      if kv is not None:  # layers [layer, L) of these rows as the re-injected forward left them
        at = jnp.asarray(sel)
        kv["k"] = kv["k"].at[layer:, at].set(rkv[0][:, :len(sel)])
        kv["v"] = kv["v"].at[layer:, at].set(rkv[1][:, :len(sel)])
      self.stats["reinject_rows"] += len(sel)
    return lg, a, kv

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
    lg, kv = self._run("reinject", sc.params, layer, cache, sc._on_data(rows), h, ids, frows,
                       fidx, pos, mask, sc._on_data(last))
    return np.asarray(lg, np.float32)[:n], kv

  def _run(self, name: str, *args):
    sc = self.pair
    key = (sc.mesh, sc.axis_rules)
    armable = (sc.armable.start, sc.armable.stop)
    if name == "extend":
      fn = _extend_fn(sc.model, sc.injection, armable, self._decodes, *key)
    elif name == "step":
      fn = _step_fn(sc.model, sc.injection, *key)
    else:
      fn = _reinject_fn(sc.model, sc.injection, args[1], armable, self._decodes, *key)
      args = args[:1] + args[2:]
    if sc.mesh is None:
      return fn(*args)
    with mesh_lib.activate(sc.mesh, sc.axis_rules):
      return fn(*args)


_MAX_NEW_TOKENS = {"retrieval": 77, "compare": 20}  # Qwen_vl.py:1568-1571; generate's default
_EOS = ("<|im_end|>", "<|endoftext|>")  # Qwen2.5-VL's generation_config eos_token_id


# Jitted steps as the pair scorer's, returning the last position's logits (every token is read)
# and, when answers are decoded, the K/V the forward computed.
@functools.lru_cache(maxsize=16)
def _extend_fn(model: QwenVL, inj: InjectionConfig | None, armable: tuple[int, int],
               collect_kv: bool, mesh, axis_rules):
  lo, hi = armable

  def extend(params, cache, rows, ids, frows, fidx, pos, mask, last):
    x = scorer_lib._embed(model, params, ids, frows, fidx)
    kv = (cache["k"][:, rows], cache["v"][:, rows])
    out = model.apply({"params": params}, x, pos, mask, last, prefix_kv=kv,
                      prefix_mask_bp=cache["mask"][rows], injection=inj, trigger_only=True,
                      collect_hidden=hi > lo, collect_kv=collect_kv, output="last",
                      method="decode")
    hid = out["hiddens"][lo:hi] if hi > lo else None
    return out["logits"], out["arm_state"].armed_layer, hid, out["kv"]
  return jax.jit(extend)


@functools.lru_cache(maxsize=64)
def _reinject_fn(model: QwenVL, inj: InjectionConfig, layer: int, armable: tuple[int, int],
                 collect_kv: bool, mesh, axis_rules):
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
        collect_kv=collect_kv, output="last", method="decode")
    return out["logits"], out["kv"]
  return jax.jit(reinject)


@functools.lru_cache(maxsize=16)
def _step_fn(model: QwenVL, inj: InjectionConfig | None, mesh, axis_rules):
  """One generated token per row against the prompt's K/V and the tokens generated before it
  (slots < t of a [L, B, G] buffer). As generate's cached forward: a forward of its own, so
  the trigger watches this token and an armed layer's memory is this token's embedding."""

  def step(params, kv, state, ids, pos, t):
    gk, gv, gmask = state
    x = model.apply({"params": params}, ids[:, None], method="embed")
    one = jnp.ones(ids.shape + (1,), bool)
    out = model.apply({"params": params}, x, pos, one, jnp.zeros(ids.shape, jnp.int32),
                      prefix_kv=(jnp.concatenate([kv["k"], gk], 2),
                                 jnp.concatenate([kv["v"], gv], 2)),
                      prefix_mask_bp=jnp.concatenate([kv["mask"], gmask], 1), injection=inj,
                      memory_bmd=x, memory_mask_bm=one, collect_kv=True, output="last",
                      method="decode")
    nk, nv = out["kv"]
    gk = jax.lax.dynamic_update_slice_in_dim(gk, nk.astype(gk.dtype), t, axis=2)
    gv = jax.lax.dynamic_update_slice_in_dim(gv, nv.astype(gv.dtype), t, axis=2)
    gmask = jax.lax.dynamic_update_slice_in_dim(gmask, one, t, axis=1)
    return out["logits"], gk, gv, gmask
  return jax.jit(step)
