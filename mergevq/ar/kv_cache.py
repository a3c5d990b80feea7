"""Static pre-allocated K/V caches for MergeAR decoding: full and compressed (DESIGN §5).

Both kinds store, per layer, keys and values in ``(B, H, capacity, head_dim)`` tensors allocated once,
and keep per row

* ``held`` (B, capacity): slots whose K/V are kept in memory;
* ``visible`` (B, capacity): slots the next query may attend to (the mask policy's row for it);
* the indices fed so far, whether each was a duplicate (the inference-time "check duplication") and
  the slot that holds it (the position cache);
* ``step``: a 0-d tensor, the 1-based position of the next token to feed.

Every per-step decision (eviction column, duplicate check, slot choice, the RoPE row) is computed from
these tensors in-graph by :meth:`KVCache.admit`: no Python branch on a tensor value, no host
synchronisation, no reallocation, so a decode step compiles whole (``torch.compile(fullgraph=True)``)
and replays as one CUDA graph (tests/test_ar_compile.py).

*Full cache* (``compressed=False``): token position i lives in slot ``P + i - 1``; capacity
``P + L - 1``; an evicted duplicate is only hidden (``visible`` False), its memory stays held.
*Compressed cache* (``compressed=True``): a token takes the first free slot; when a duplicate leaves the
recent window its slot is freed and reused, so a row holds ``prefix + unique tokens so far + the
duplicates among the last w tokens`` <= ``P + U + w`` entries. Capacity is ``P + max_unique + w``
(capped at ``P + L - 1``, which no row can exceed). When ``max_unique`` is a bound the sampler enforces
(exact-K sampling) the cache never runs out. Otherwise (the paper's free sampling, where a row may
produce more than K distinct indices) the driver calls :meth:`KVCache.room` between steps: a row gains
at most one entry per step, so after one host read of the smallest free-slot count f, the next f
steps need no check; only when f is 0 does the cache grow (outside the compiled step).
With the plain causal policy nothing is ever evicted and both kinds hold every entry.

Slots fill lowest-first and a slot index is only ever taken while every lower slot is held, so after
feeding position i every held slot is below ``P + i``: attention reads only the first
:meth:`KVCache.span` slots (a static size from a few buckets, known on the host).

Rotary embeddings are applied before K is written, so slot order is irrelevant to attention: the
compressed and the full cache give the same logits as the teacher-forced pass with the training mask
(tests/test_ar_cache.py).
"""

from __future__ import annotations

import torch
from torch import Tensor

from mergevq.ar.mask import MaskPolicy

SPAN_BUCKET = 64
"""Attention spans are rounded up to a multiple of this many slots: few distinct shapes (compiled
graphs), little wasted work."""


class KVCache:
    """One decode's K/V storage and slot table; ``policy`` decides what is evicted, ``compressed`` whether
    an evicted slot is freed for reuse. ``max_unique`` sizes the compressed cache (usually max K);
    ``bounded``: the sampler guarantees no row feeds more than ``max_unique`` distinct indices (exact-K),
    so the compressed cache can never run out of slots."""

    def __init__(self, *, depth: int, batch: int, heads: int, head_dim: int, policy: MaskPolicy, length: int,
                 compressed: bool, max_unique: int, dtype: torch.dtype, device: torch.device | str,
                 bounded: bool = False) -> None:
        self.policy = policy
        self.length = length
        self.compressed = compressed
        prefix = policy.prefix
        full = prefix + length - 1  # every fed entry: the prefix and t_1..t_{L-1}
        window = length if policy.window is None else policy.window
        capacity = min(full, prefix + max_unique + window) if compressed and policy.window is not None else full
        self.max_capacity = full
        self.bounded = bounded
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
        self.slot_of = torch.zeros(batch, length, dtype=torch.long, device=self.device)
        self.peak_entries = torch.zeros(batch, dtype=torch.long, device=self.device)
        self.step = torch.ones((), dtype=torch.long, device=self.device)  # position of the next token fed
        self._rows = torch.arange(batch, device=self.device)
        self._columns = torch.arange(length, device=self.device)
        self.fed = 0  # host copy of step - 1, kept by the driver (never read from the device)
        self._mark_static()

    def _mark_static(self) -> None:
        """Tell the compiler that these buffers keep their address (CUDA graphs replay in place)."""
        if self.device.type == "cuda":
            for t in (*self.keys, *self.values, self.held, self.visible, self.history, self.duplicate,
                      self.slot_of, self.peak_entries, self.step):
                torch._dynamo.mark_static_address(t)

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

    def span(self) -> int:
        """Slots the next decode step attends over (host-side, no sync): every held slot is below
        ``P + fed + 1`` after the next admit; rounded up to :data:`SPAN_BUCKET`, capped at the capacity."""
        used = self.policy.prefix + self.fed + 1
        return min(self.capacity, -(-used // SPAN_BUCKET) * SPAN_BUCKET)

    # ---- growth (host side, between steps) --------------------------------------------------------

    def room(self) -> int:
        """Steps that are sure to find a free slot in every row. Reads the device (one sync) only for an
        unbounded compressed cache, and grows the cache when a row has no free slot left (a row produced
        more unique tokens than planned)."""
        if not self.compressed or self.bounded or self.capacity == self.max_capacity:
            return self.length
        steps = self._safe_steps()
        if steps == 0:
            # at least w slots, at most double the token part: few growths, so few recompilations
            token_part = self.capacity - self.policy.prefix
            self._grow(min(max(self.policy.window, token_part), self.max_capacity - self.capacity))
            steps = self._safe_steps()
        return steps

    def _safe_steps(self) -> int:
        """Admits from now on that find a free slot in every row, whatever the next tokens are. Admit j
        (j = 1, 2, ...) first evicts the duplicate leaving the window, if any: for j <= w that is a
        token already fed (its flag is known), later ones are not known yet and not counted. A row gains
        at most one entry per admit, so admit j finds ``free + evicted(j) - (j - 1)`` free slots."""
        window = self.policy.window
        free = self.capacity - self.held.sum(dim=1)  # (B,)
        columns = torch.arange(self.fed - window, self.fed, device=self.device)  # leaving at admits 1..w
        evicted = self.duplicate[:, columns.clamp(min=0)] & (columns >= 0)  # (B, w)
        found = free[:, None] + evicted.long().cumsum(dim=1) - torch.arange(window, device=self.device)  # (B, w)
        safe = (found >= 1).long().cumprod(dim=1).sum(dim=1)  # (B,) admits 1..safe are sure
        # past w admits: at least as many more as slots are free after them
        beyond = (free + evicted.sum(dim=1) - window).clamp(min=0)
        return int(torch.where(safe == window, window + beyond, safe).min())

    def _grow(self, extra: int) -> None:
        def pad(t: Tensor) -> Tensor:
            return torch.cat([t, t.new_zeros(*t.shape[:2], extra, t.shape[3])], dim=2)

        self.keys = [pad(t) for t in self.keys]
        self.values = [pad(t) for t in self.values]
        self.held = torch.cat([self.held, self.held.new_zeros(self.batch, extra)], dim=1)
        self.visible = self.held  # only the compressed cache grows
        self._mark_static()

    # ---- storage ----------------------------------------------------------------------------------

    def write(self, layer: int, k: Tensor, v: Tensor, slots: Tensor, *,
              span: int | None = None) -> tuple[Tensor, Tensor]:
        """Store ``k``, ``v`` (B, H, n, head_dim) at ``slots`` (B, n) of ``layer``; return the layer's
        keys and values over the first ``span`` slots (default all), each (B, H, span, head_dim)."""
        index = slots[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[3])  # (B, H, n, head_dim)
        self.keys[layer].scatter_(2, index, k.to(self.dtype))
        self.values[layer].scatter_(2, index, v.to(self.dtype))
        if span is None or span >= self.capacity:
            return self.keys[layer], self.values[layer]
        return self.keys[layer][:, :, :span], self.values[layer][:, :, :span]

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

    def visible_mask(self, span: int | None = None) -> Tensor:
        """(B, 1, 1, span): what the query of the entry just admitted may attend to."""
        visible = self.visible if span is None else self.visible[:, :span]
        return visible[:, None, None, :]

    def admit(self, tokens: Tensor) -> Tensor:
        """Before the entry of t_step (``tokens`` (B,), ``step`` the cache's position tensor): evict the
        duplicate that leaves the recent window, record whether ``tokens`` is a duplicate of an index fed
        so far, give it a slot (B,), which becomes held and visible, and advance ``step``. All in-graph:
        the caller keeps ``fed`` on the host and calls :meth:`room` for the unbounded compressed cache."""
        step, rows = self.step, self._rows
        column = step - 1  # 0-d: this token's column in history / duplicate / slot_of
        window = self.policy.window
        if window is not None:
            leaving_column = step - window - 1  # t_{step - w} leaves the window [step - w + 1, step]
            valid = leaving_column >= 0
            at = leaving_column.clamp(min=0).view(1)
            leaving = self.slot_of.index_select(1, at)[:, 0]  # (B,)
            evict = self.duplicate.index_select(1, at)[:, 0] & valid
            kept = self.visible[rows, leaving] & ~evict
            self.visible.index_put_((rows, leaving), kept)  # the compressed cache also frees the slot
        earlier = self._columns < column  # (L,)
        duplicate = ((self.history == tokens[:, None]) & earlier).any(dim=1)  # (B,)
        at = column.view(1)
        self.duplicate.index_copy_(1, at, duplicate[:, None])
        self.history.index_copy_(1, at, tokens[:, None])
        if self.compressed:
            slots = (~self.held).to(torch.uint8).argmax(dim=1)  # first free slot (room() guarantees one)
        else:
            slots = (self.policy.prefix + column).expand(self.batch)
            self.visible.index_put_((rows, slots), torch.ones_like(tokens, dtype=torch.bool))
        self.held.index_put_((rows, slots), torch.ones_like(tokens, dtype=torch.bool))
        self.slot_of.index_copy_(1, at, slots[:, None])
        self.peak_entries.copy_(torch.maximum(self.peak_entries, self.held.sum(dim=1)))
        self.step.add_(1)
        return slots


class IntraCache:
    """K/V of the intra-token (sub-token) transformer for one raster step: per intra layer
    ``(N, H, n_sub, head_dim)``, position s written when sub-token s's input runs, so sub-token s
    runs one position instead of s + 1. Allocated once per decode and overwritten every step (a step
    writes position s before any query reads it)."""

    def __init__(self, *, depth: int, rows: int, heads: int, head_dim: int, length: int, dtype: torch.dtype,
                 device: torch.device | str) -> None:
        shape = (rows, heads, length, head_dim)
        self.dtype = dtype
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(depth)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(depth)]
        if torch.device(device).type == "cuda":
            for t in (*self.keys, *self.values):
                torch._dynamo.mark_static_address(t)

    def write(self, layer: int, k: Tensor, v: Tensor, slots: Tensor, *,
              span: int | None = None) -> tuple[Tensor, Tensor]:
        """Store ``k``, ``v`` (N, H, 1, head_dim) at position ``slots`` (N, 1); return positions
        ``[0, span)`` of the layer's keys and values."""
        index = slots[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[3])  # (N, H, 1, head_dim)
        self.keys[layer].scatter_(2, index, k.to(self.dtype))
        self.values[layer].scatter_(2, index, v.to(self.dtype))
        return self.keys[layer][:, :, :span], self.values[layer][:, :, :span]

