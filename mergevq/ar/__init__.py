"""MergeAR (DESIGN §5): the generator, its attention mask policy, KV caches and sampling."""

from mergevq.ar.kv_cache import KVCache
from mergevq.ar.mask import MaskPolicy, first_occurrence, is_duplicate
from mergevq.ar.model import PRESETS, AROutput, MergeAR, MergeARConfig, build_config
from mergevq.ar.sampling import (
           Generated,
           SamplingSettings,
           generate,
           teacher_forced_decode,
)

__all__ = ["PRESETS", "AROutput", "Generated", "KVCache", "MaskPolicy", "MergeAR", "MergeARConfig",
           "SamplingSettings", "build_config", "first_occurrence", "generate", "is_duplicate",
           "teacher_forced_decode"]
