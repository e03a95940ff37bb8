"""Fine-stage prompts for query and candidate items that are text, an image, or both.

An image against a plain text (Flickr30k / COCO / long captions, a class name, a SugarCrepe
caption, an MMEB image query with a text answer...) is asked the scorer's own match question,
[image, "Does the image match the caption: <{text}>? Please directly output True or False"]
(data/qwen_preprocess.MATCH_PROMPT), so those scores are the caption pipeline's bit for bit.

Any other pair (an image + text item on either side, two images, two texts) is one user turn
laid out as the reference's MMEB / M-BEIR driver lays it out: the images first, each after its
label, then one True/False question naming the parts that exist:

  ["Query image", <query image>]?  ["Candidate image", <candidate image>]?
  "Does {candidate} match {query}? Please directly output True or False"

with {query} one of "the query image" | "the query text: <{q}>" | "the query image and the
query text: <{q}>" (and {candidate} the same with "candidate"). Texts are the items' plain
text (MMEB's `<|image_1|>` placeholders removed: the image has its own place above). Scored as
the match question is: P("True") of the full-vocabulary softmax at the last position.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from retformer_jax.retllm.benchmarks.items import Item

QUESTION = "Does {candidate} match {query}? Please directly output True or False"
QUERY_IMAGE_LABEL, CANDIDATE_IMAGE_LABEL = "Query image", "Candidate image"

# A prompt's content: ("image", "") and ("text", words) parts, in order (hashable).
Content = tuple[tuple[str, str], ...]


def is_plain_pair(query: Item, candidate: Item) -> bool:
  """An image alone against a text alone (either way round): the match question applies."""
  q_img, c_img = query.has_image, candidate.has_image
  q_txt, c_txt = query.has_text, candidate.has_text
  return (q_img and not q_txt and c_txt and not c_img) or (
      q_txt and not q_img and c_img and not c_txt)


def describe(item: Item, role: str) -> str:
  """'the query image', 'the query text: <...>' or both, for the question."""
  parts = []
  if item.has_image:
    parts.append(f"the {role} image")
  if item.has_text:
    parts.append(f"the {role} text: <{item.plain_text}>")
  if not parts:
    raise ValueError(f"a {role} item has neither text nor an image")
  return " and ".join(parts)


def mixed_content(query: Item, candidate: Item) -> Content:
  """The user turn of a mixed pair (see the module docstring)."""
  out: list[tuple[str, str]] = []
  if query.has_image:
    out += [("text", QUERY_IMAGE_LABEL), ("image", "")]
  if candidate.has_image:
    out += [("text", CANDIDATE_IMAGE_LABEL), ("image", "")]
  out.append(("text", QUESTION.format(candidate=describe(candidate, "candidate"),
                                      query=describe(query, "query"))))
  return tuple(out)


class ItemPrompter:
  """Token ids of a mixed pair's prompt through the scorer's tokenizer and chat template.

  Passed to PairScorer.score_pairs as `prompter`: there each "caption" is a Content and each
  image entry the tuple of the images the content shows, in order.
  """

  def __init__(self, prompter):
    self.tokenizer = prompter.tokenizer
    self.chat_template = prompter.chat_template
    self.image_token_id = prompter.image_token_id
    self.true_id = prompter.true_id

  def text(self, content: Content) -> str:
    parts = [{"type": "image"} if kind == "image" else {"type": "text", "text": words}
             for kind, words in content]
    return self.tokenizer.apply_chat_template(
        [{"role": "user", "content": parts}], chat_template=self.chat_template, tokenize=False,
        add_generation_prompt=True)

  def pair_ids(self, content: Content, num_image_tokens: Sequence[int]) -> np.ndarray:
    """int32 ids, the k-th image placeholder expanded to num_image_tokens[k] copies."""
    ids = np.asarray(self.tokenizer(self.text(content), add_special_tokens=False)["input_ids"])
    where = np.flatnonzero(ids == self.image_token_id)
    if where.size != len(num_image_tokens):
      raise ValueError(f"The prompt holds {where.size} image placeholders for "
                       f"{len(num_image_tokens)} images.")
    pieces, last = [], 0
    for at, n in zip(where, num_image_tokens):
      pieces += [ids[last:at], np.full(int(n), self.image_token_id)]
      last = int(at) + 1
    pieces.append(ids[last:])
    return np.concatenate(pieces).astype(np.int32)

  @staticmethod
  def prefix_len(ids: np.ndarray, image_token_id: int) -> int:
    """The cached prefix ends after the last image token: the labels and images, which every
    question about the same images shares (no image: nothing shared)."""
    at = np.flatnonzero(ids == image_token_id)
    return int(at[-1]) + 1 if at.size else len(ids) - 1
