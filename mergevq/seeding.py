"""Seeds derived from integers, for random draws that must not depend on what ran before them
(per-sample sampling seeds, per-image augmentation seeds)."""

from __future__ import annotations

import numpy as np

__all__ = ["derived_seed"]


def derived_seed(*words: int) -> int:
    """A 63-bit seed (a valid ``torch.manual_seed`` argument) from integers, through numpy's
    SeedSequence: nearby inputs give unrelated streams."""
    state = np.random.SeedSequence([int(w) for w in words]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])
