"""Flax models: CLIP (frozen encoder), RetFormer, Qwen2.5-VL."""
