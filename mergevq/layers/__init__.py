"""Building blocks shared by the tokenizer and MergeAR."""

from mergevq.layers.attention import Attention, AttentionOutput
from mergevq.layers.conv import ResBlock, group_norm

__all__ = ["Attention", "AttentionOutput", "ResBlock", "group_norm"]
