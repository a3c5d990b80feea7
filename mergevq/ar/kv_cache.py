"""Static pre-allocated K/V caches for MergeAR decoding: full and compressed (DESIGN §5).

Both kinds store, per layer, keys and values in ``(B, H, capacity, head_dim)`` tensors allocated once,
and keep per row

* ``held`` (B, capacity): slots whose K/V are kept in memory;
* ``visible`` (B, capacity): slots the next query may attend to (the mask policy's row for it);
* the indices fed so far, whether each was a duplicate (the inference-time "check duplication") and
  the slot that holds it (the position cache).

*Full cache* (``compressed=False``): token position i lives in slot ``P + i - 1``; capacity
``P + L - 1``; an evicted duplicate is only hidden (``visible`` False), its memory stays held.
*Compressed cache* (``compressed=True``): a token takes the first free slot; when a duplicate leaves the
recent window its slot is freed and reused, so a row holds ``prefix + unique tokens so far + the
duplicates among the last w tokens`` <= ``P + U + w`` entries. Capacity starts at
``P + max_unique + w`` and grows by ``w`` slots only when some row has no free slot (both capped at
``P + L - 1``, which no row can exceed). With the plain causal policy nothing is ever evicted and both kinds hold every entry.

Rotary embeddings are applied before K is written, so slot order is irrelevant to attention: the
compressed and the full cache give the same logits as the teacher-forced pass with the training mask
(tests/test_ar_cache.py).
"""

from __future__ import annotations

import torch
from torch import Tensor

from mergevq.ar.mask import MaskPolicy, is_duplicate


class KVCache:
    """One decode's K/V storage and slot table; ``policy`` decides what is evicted, ``compressed`` whether
    an evicted slot is freed for reuse. ``max_unique`` sizes the compressed cache (usually max K)."""

    def __init__(self, *, depth: int, batch: int, heads: int, head_dim: int, policy: MaskPolicy, length: int,
                 compressed: bool, max_unique: int, dtype: torch.dtype, device: torch.device | str) -> None:
        self.policy = policy
        self.length = length
        self.compressed = compressed
        prefix = policy.prefix
        full = prefix + length - 1  # every fed entry: the prefix and t_1..t_{L-1}
        window = length if policy.window is None else policy.window
        capacity = min(full, prefix + max_unique + window) if compressed and policy.window is not None else full
        self.max_capacity = full
        self.dtype = dtype
        self.device = torch.device(device)
        shape = (batch, heads, capacity, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=self.device) for _ in range(depth)]
        self.values = [torch.zeros(shape, dtype=dtype, device=self.device) for _ in range(depth)]
        self.held = torch.zeros(batch, capacity, dtype=torch.bool, device=self.device)
        # compressed: what is held is exactly what is visible (one tensor); full: evicted slots stay held
        self.visible = self.held if compressed else torch.zeros_like(self.held)
        self.history = torch.zeros(batch, length, dtype=torch.long, device=self.device)  # t_i at column i-1
        self.duplicate = torch.zeros(batch, length, dtype=torch.bool, device=self.device)
        self.slot_of = torch.full((batch, length), -1, dtype=torch.long, device=self.device)
        self.peak_entries = torch.zeros(batch, dtype=torch.long, device=self.device)
        self._rows = torch.arange(batch, device=self.device)

    # ---- sizes ------------------------------------------------------------------------------------

    @property
    def batch(self) -> int:
        return self.held.shape[0]

    @property
    def capacity(self) -> int:
        return self.held.shape[1]

    @property
    def entries(self) -> Tensor:
        """(B,) entries held now."""
        return self.held.sum(dim=1)

    def nbytes(self) -> int:
        """Bytes of K/V storage allocated (all layers, all rows)."""
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))

    # ---- storage ----------------------------------------------------------------------------------

    def write(self, layer: int, k: Tensor, v: Tensor, slots: Tensor) -> tuple[Tensor, Tensor]:
        """Store ``k``, ``v`` (B, H, n, head_dim) at ``slots`` (B, n) of ``layer``; return the layer's
        whole (B, H, capacity, head_dim) keys and values."""
        index = slots[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[3])  # (B, H, n, head_dim)
        self.keys[layer].scatter_(2, index, k.to(self.dtype))
        self.values[layer].scatter_(2, index, v.to(self.dtype))
        return self.keys[layer], self.values[layer]

    def _grow(self, extra: int) -> None:
        def pad(t: Tensor) -> Tensor:
            return torch.cat([t, t.new_zeros(*t.shape[:2], extra, t.shape[3])], dim=2)

        self.keys = [pad(t) for t in self.keys]
        self.values = [pad(t) for t in self.values]
        self.held = torch.cat([self.held, self.held.new_zeros(self.batch, extra)], dim=1)
        self.visible = self.held  # only the compressed cache grows

    # ---- slot table -------------------------------------------------------------------------------

    def admit_prefix(self) -> Tensor:
        """Reserve slots 0..P-1 for the prefix; returns them as (B, P)."""
        prefix = self.policy.prefix
        self.held[:, :prefix] = True
        if not self.compressed:
            self.visible[:, :prefix] = True
        self.peak_entries = torch.maximum(self.peak_entries, self.entries)
        return torch.arange(prefix, device=self.device).expand(self.batch, prefix)

    def prefix_mask(self) -> Tensor:
        """(B, 1, P, capacity): prefix query q sees prefix slots <= q."""
        prefix = self.policy.prefix
        slot = torch.arange(self.capacity, device=self.device)
        mask = slot[None, :] <= torch.arange(prefix, device=self.device)[:, None]  # (P, capacity)
        return mask.expand(self.batch, 1, prefix, self.capacity)

    def visible_mask(self) -> Tensor:
        """(B, 1, 1, capacity): what the query of the entry just admitted may attend to."""
        return self.visible[:, None, None, :]

    def admit(self, position: int, tokens: Tensor) -> Tensor:
        """Before the entry of t_position (``tokens`` (B,), 1-based position): evict the duplicate that
        leaves the recent window, record whether ``tokens`` is a duplicate of an index fed so far, and
        give it a slot (B,), which becomes held and visible."""
        if not 1 <= position < self.length:
            raise ValueError(f"position {position} outside [1, L-1={self.length - 1}] (t_L is never fed)")
        window = self.policy.window
        if window is not None and position - window >= 1:
            column = position - window - 1  # t_{position - w} leaves the window [position - w + 1, position]
            leaving = self.slot_of[:, column]
            evict = self.duplicate[:, column]
            self.visible[self._rows, leaving] &= ~evict  # the compressed cache also frees the slot
        column = position - 1
        self.duplicate[:, column] = is_duplicate(self.history[:, :column], tokens)
        self.history[:, column] = tokens
        if self.compressed:
            free = ~self.held
            if not bool(free.any(dim=1).all()):  # a row produced more unique tokens than planned
                self._grow(min(window or 1, self.max_capacity - self.capacity))
                free = ~self.held
            slots = free.to(torch.uint8).argmax(dim=1)  # first free slot
        else:
            slots = torch.full_like(tokens, self.policy.prefix + column)
            self.visible[self._rows, slots] = True
        self.held[self._rows, slots] = True
        self.slot_of[:, column] = slots
        self.peak_entries = torch.maximum(self.peak_entries, self.entries)
        return slots
