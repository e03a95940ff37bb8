"""Everything generated for the demo, so that it runs with nothing downloaded.

`dataset`: a long-tailed image-caption data set drawn from seeds; `clip` and `qwen`: tiny
random CLIP and Qwen2.5-VL written as HuggingFace folders and loaded back through the real
loaders; `tokenizers`: the small tokenizers those folders carry.
"""
