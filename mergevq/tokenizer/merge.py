"""Token merging by bipartite soft matching (the ToMe idea), written here from its description.

Conventions used throughout:

- The encoder's current sequence is ``[CLS, t_0, ..., t_{N-1}]`` (length N + 1); [CLS] sits at index 0
  and is never merged.
- ``sizes`` (B, N + 1) counts how many original tokens each current token holds ([CLS] has size 1).
- ``assign`` (B, L) maps every original (non-CLS) position l to the index of the current *non-CLS*
  token that holds it, so a sequence index is ``assign + 1``.
- One merge step is described by a :class:`MergePlan`, whose ``old_to_new`` (B, N + 1) gives for
  every current token its index in the merged sequence. Merging, size bookkeeping and assignment
  tracking are all a scatter or gather through that one index tensor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from mergevq.errors import ConfigError

# ---------------------------------------------------------------------------------------------
# One merge step
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MergePlan:
    """``old_to_new`` (B, N) int64: index of every current token in the merged sequence.
    ``num_out``: length of the merged sequence (N − r)."""

    old_to_new: torch.Tensor
    num_out: int


def max_mergeable(num_tokens: int, *, protect_first: bool = True) -> int:
    """How many tokens one matching step can merge in a sequence of ``num_tokens`` (incl. [CLS]).

    Set A holds the even positions (ceil(N/2) tokens), set B the odd ones; only A tokens are merged
    (into B), and a protected first token is never merged. A needs a non-empty B to merge into.
    """
    if num_tokens < 2:
        return 0
    size_a = (num_tokens + 1) // 2
    return size_a - 1 if protect_first else size_a


@torch.no_grad()
def bipartite_soft_matching(
    metric: torch.Tensor, *, r: int, protect_first: bool = True
) -> MergePlan:
    """Plan merging ``r`` tokens of a sequence with features ``metric`` (B, N, C).

    Tokens alternate into sets A (even positions) and B (odd); each A token picks its most
    cosine-similar B token; the ``r`` A tokens with the highest best-scores are merged into their
    partners. The merged sequence is ``[unmerged A in original order, all of B in original order]``,
    so a protected first token stays at index 0. Ties are broken by position (stable sorts).
    """
    bsz, n, _ = metric.shape
    limit = max_mergeable(n, protect_first=protect_first)
    if not 0 <= r <= limit:
        raise ValueError(
            f"r={r} tokens cannot be merged in one step of a {n}-token sequence; valid: 0..{limit}"
        )
    device = metric.device
    metric = torch.nn.functional.normalize(metric.float(), dim=-1)
    set_a, set_b = metric[:, ::2], metric[:, 1::2]  # (B, Na, C), (B, Nb, C)
    size_a, size_b = set_a.shape[1], set_b.shape[1]
    scores = set_a @ set_b.transpose(1, 2)  # (B, Na, Nb) cosine similarities
    if protect_first:
        scores[:, 0, :] = -math.inf
    best, partner = scores.max(dim=-1)  # (B, Na) each
    order = best.argsort(dim=-1, descending=True, stable=True)  # (B, Na)
    src = order[:, :r]  # (B, r): A tokens that merge away
    kept = order[:, r:].sort(dim=-1).values  # (B, Na - r): A tokens that stay, in position order
    dst = partner.gather(1, src)  # (B, r): their B partners
    kept_a = size_a - r

    new_a = torch.empty(bsz, size_a, dtype=torch.long, device=device)
    new_a.scatter_(1, kept, torch.arange(kept_a, device=device).expand(bsz, -1))
    new_a.scatter_(1, src, dst + kept_a)
    new_b = (torch.arange(size_b, device=device) + kept_a).expand(bsz, -1)
    old_to_new = torch.empty(bsz, n, dtype=torch.long, device=device)
    old_to_new[:, ::2] = new_a
    old_to_new[:, 1::2] = new_b
    return MergePlan(old_to_new=old_to_new, num_out=n - r)


def merge_tokens(
    x: torch.Tensor, sizes: torch.Tensor, plan: MergePlan
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply ``plan``: x (B, N, D), sizes (B, N) -> (B, N − r, D), (B, N − r).

    Each merged token is the size-weighted mean of the tokens mapped onto it; sizes add.
    """
    bsz, _, dim = x.shape
    index = plan.old_to_new  # (B, N)
    weighted = x * sizes.to(x.dtype).unsqueeze(-1)  # (B, N, D)
    total = x.new_zeros(bsz, plan.num_out, dim).scatter_add(
        1, index.unsqueeze(-1).expand(-1, -1, dim), weighted
    )  # (B, N - r, D)
    new_sizes = sizes.new_zeros(bsz, plan.num_out).scatter_add(1, index, sizes)  # (B, N - r)
    return total / new_sizes.to(x.dtype).unsqueeze(-1), new_sizes


def track_assignment(assign: torch.Tensor, plan: MergePlan) -> torch.Tensor:
    """Follow one merge: ``assign`` (B, L) indexes non-CLS tokens of the sequence that ``plan``
    merges ([CLS] at index 0, protected); returns the indices into the merged sequence's non-CLS
    tokens."""
    return plan.old_to_new.gather(1, assign + 1) - 1  # (B, L)


def proportional_bias(sizes: torch.Tensor) -> torch.Tensor:
    """Additive per-key attention bias log(size) (B, N) -> (B, N); a size-1 token gets 0.

    Attending with this bias equals attending over a sequence where each token is repeated
    ``size`` times."""
    return sizes.float().log()


@dataclass(frozen=True)
class CanonicalTokens:
    """The K kept tokens renumbered by the first raster position they cover.

    ``tokens`` (B, K, D), ``sizes`` (B, K), ``assign`` (B, L) int64 with values in [0, K);
    ``assign[b, l]`` at the first position of token k increases with k, so ``assign[:, 0] == 0``."""

    tokens: torch.Tensor
    sizes: torch.Tensor
    assign: torch.Tensor


def canonicalize(
    tokens: torch.Tensor, sizes: torch.Tensor, assign: torch.Tensor
) -> CanonicalTokens:
    """Reorder ``tokens`` (B, K, D) / ``sizes`` (B, K) into raster order of first occurrence and
    renumber ``assign`` (B, L) to match. Every kept token must hold at least one position."""
    bsz, num_keep, dim = tokens.shape
    length = assign.shape[1]
    positions = torch.arange(length, device=assign.device).expand(bsz, -1)  # (B, L)
    first = torch.full((bsz, num_keep), length, dtype=torch.long, device=assign.device)
    first = first.scatter_reduce(1, assign, positions, reduce="amin")  # (B, K)
    order = first.argsort(dim=-1)  # (B, K): new index -> old index (first positions are distinct)
    rank = torch.empty_like(order).scatter_(
        1, order, torch.arange(num_keep, device=order.device).expand(bsz, -1)
    )  # (B, K): old index -> new index
    return CanonicalTokens(
        tokens=tokens.gather(1, order.unsqueeze(-1).expand(-1, -1, dim)),
        sizes=sizes.gather(1, order),
        assign=rank.gather(1, assign),
    )


# ---------------------------------------------------------------------------------------------
# Per-layer schedule r_1..r_depth (the authors' rule, docs/official_parity.md)
# ---------------------------------------------------------------------------------------------

INFLECTION = -0.5  # the authors' decreasing ramp: the first layer merges about 3x the last


def _ramp(depth: int, r: int, total: int | None) -> list[int]:
    """The authors' ramp for a base rate ``r``: from int(1.5·r) linearly down towards 0.5·r, each
    entry truncated; with ``total`` the difference to it is added to the first layer."""
    first = int(r * (1.0 - INFLECTION))
    last = 2 * r - first
    step = (last - first) / (depth - 1) if depth > 1 else 0.0
    out = [int(first + step * i) for i in range(depth)]
    if total is not None:
        out[0] += total - sum(out)
    return out


@lru_cache(maxsize=4096)
def base_rate(depth: int, num_merge: int) -> int:
    """The base rate r whose plain ramp sums closest to ``num_merge`` (the first such r; the
    search stops once the gap grows), as the authors choose it."""
    gap, best = math.inf, 0
    for r in range(num_merge):
        miss = abs(sum(_ramp(depth, r, None)) - num_merge)
        if miss < gap:
            best, gap = r, miss
        elif miss > gap:
            break
    return best


@dataclass(frozen=True)
class MergeSchedule:
    """``planned`` (depth,): the ramp, summing to the requested merge count; ``realized`` (depth,):
    what each layer can merge (at most floor(N/2) of N non-[CLS] tokens, none when the plan is
    <= 0); ``num_keep``: tokens left after ``realized``."""

    planned: tuple[int, ...]
    realized: tuple[int, ...]
    num_keep: int


@lru_cache(maxsize=4096)
def plan_merges(*, num_tokens: int, num_merge: int, depth: int) -> MergeSchedule:
    """Merge ``num_merge`` of ``num_tokens`` tokens over ``depth`` blocks by the authors' rule.

    The plan is the ramp of :func:`base_rate` with the rounding remainder put on the first layer;
    layers then merge ``min(r_l, floor(N_l / 2))``, so a plan too steep for the sequence merges fewer
    tokens in total (``realized``). E.g. L = 256, 112 merges, depth 12: 12, 14, 13, 12, 11, 10, 9,
    8, 7, 6, 5, 5.
    """
    if depth < 1 or num_tokens < 1 or not 0 <= num_merge < num_tokens:
        raise ConfigError(
            f"cannot merge {num_merge} of {num_tokens} tokens in {depth} blocks: need depth >= 1 "
            f"and 0 <= merges < tokens"
        )
    planned = tuple(_ramp(depth, base_rate(depth, num_merge), num_merge))
    realized, n = [], num_tokens
    for r in planned:
        r = max(0, min(r, max_mergeable(n + 1)))
        realized.append(r)
        n -= r
    return MergeSchedule(planned=planned, realized=tuple(realized), num_keep=n)


def reachable_counts(*, num_tokens: int, depth: int) -> tuple[int, ...]:
    """Every kept count K that the authors' schedule produces exactly from ``num_tokens``."""
    return tuple(
        k for k in range(1, num_tokens + 1)
        if plan_merges(num_tokens=num_tokens, num_merge=num_tokens - k, depth=depth).num_keep == k
    )


def merge_schedule(*, num_tokens: int, num_keep: int, depth: int) -> tuple[int, ...]:
    """Tokens merged per block to keep exactly ``num_keep`` of ``num_tokens``; a K the schedule
    cannot produce exactly is a one-line :class:`ConfigError` naming the reachable neighbours."""
    if not 1 <= num_keep <= num_tokens:
        raise ConfigError(f"num_keep={num_keep} must be in [1, {num_tokens}] (num_tokens)")
    plan = plan_merges(num_tokens=num_tokens, num_merge=num_tokens - num_keep, depth=depth)
    if plan.num_keep != num_keep:
        ok = reachable_counts(num_tokens=num_tokens, depth=depth)
        below = [k for k in ok if k < num_keep][-3:]
        above = [k for k in ok if k > num_keep][:3]
        raise ConfigError(
            f"num_keep={num_keep} is unreachable from {num_tokens} tokens in {depth} merging blocks "
            f"(the merge schedule keeps {plan.num_keep}); nearest reachable: {below + above}, "
            f"smallest {ok[0]}"
        )
    return plan.realized


# ---------------------------------------------------------------------------------------------
# Kept-count sampling for training
# ---------------------------------------------------------------------------------------------

K_CANDIDATES: dict[str, tuple[int, ...]] = {
    "G": (225, 256, 289, 324, 361, 400, 441, 484, 529),
    "G-d32": (225, 256, 289, 324, 361, 400, 441, 484),
    "GR": (121, 144, 169, 196, 225, 256),
    "R": (49, 64, 81, 100, 121, 144),
}
K_NOMINAL: dict[str, int] = {"G": 256, "G-d32": 256, "GR": 144, "R": 64}


def default_candidates(
    *, num_tokens: int, nominal: int, below: int = 1, above: int = 4
) -> tuple[int, ...]:
    """Square counts s² for s from sqrt(nominal) − below to sqrt(nominal) + above, within
    [1, num_tokens]. ``nominal`` must be a perfect square."""
    side = math.isqrt(nominal)
    if side * side != nominal or not 1 <= nominal <= num_tokens:
        raise ConfigError(
            f"nominal={nominal} must be a perfect square in [1, {num_tokens}] (num_tokens)"
        )
    sides = range(max(1, side - below), side + above + 1)
    return tuple(s * s for s in sides if s * s <= num_tokens)


@dataclass(frozen=True)
class KSampler:
    """Draws the kept-token count K for a training step, identically on every rank.

    Weights follow the authors' training configs (``cand_distribution: gaussian-N``): over candidate
    *positions* i, w_i ∝ exp(−(i − i_nominal)² / (2·std²)) + floor, with std 0.5 and floor 0.05. The
    floor keeps every candidate in training, so the largest K, where the paper's headline rFID is
    measured, is trained too: GR and R (6 candidates, nominal second) draw 11.8 / 66.8 / 11.8 / 3.2 /
    3.2 / 3.2 %; G-d32 (8) at least 2.99 % and G-d64 (9) at least 2.91 % per candidate.

    A draw depends only on (seed, step): ``numpy.random.default_rng([seed, step])``, so ranks agree
    without communicating and a resumed run repeats the same K sequence. (The authors cycle a
    deterministic u = (batch_idx mod 100)/100 through the same cumulative weights.)
    """

    candidates: tuple[int, ...]
    nominal: int
    std: float = 0.5
    floor: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        cands = tuple(int(c) for c in self.candidates)
        object.__setattr__(self, "candidates", cands)
        if not cands or any(c < 1 for c in cands) or list(cands) != sorted(set(cands)):
            raise ConfigError(f"candidates={cands} must be distinct positive ints, increasing")
        if self.nominal not in cands:
            raise ConfigError(f"nominal={self.nominal} must be one of candidates={cands}")
        if not self.std > 0:
            raise ConfigError(f"std={self.std} must be > 0 (candidate-position units)")
        if not self.floor >= 0:
            raise ConfigError(f"floor={self.floor} must be >= 0")
        if self.seed < 0:
            raise ConfigError(f"seed={self.seed} must be >= 0")

    @classmethod
    def from_preset(cls, name: str, *, std: float = 0.5, floor: float = 0.05, seed: int = 0) -> KSampler:
        """One of ``K_CANDIDATES`` ("G", "G-d32", "GR", "R") with its nominal K."""
        if name not in K_CANDIDATES:
            raise ConfigError(f"K preset {name!r} is unknown; valid: {sorted(K_CANDIDATES)}")
        return cls(candidates=K_CANDIDATES[name], nominal=K_NOMINAL[name], std=std, floor=floor, seed=seed)

    @property
    def weights(self) -> tuple[float, ...]:
        """Probabilities of the candidates (sum to 1)."""
        center = self.candidates.index(self.nominal)
        raw = [
            math.exp(-((i - center) ** 2) / (2 * self.std**2)) + self.floor
            for i in range(len(self.candidates))
        ]
        return tuple(w / sum(raw) for w in raw)

    def sample(self, step: int) -> int:
        """K for global step ``step`` (>= 0)."""
        if step < 0:
            raise ValueError(f"step={step} must be >= 0")
        u = np.random.default_rng([self.seed, step]).random()
        index = int(np.searchsorted(np.cumsum(self.weights), u, side="right"))
        return self.candidates[min(index, len(self.candidates) - 1)]
