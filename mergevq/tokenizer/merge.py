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
# Per-layer schedule r_1..r_depth
# ---------------------------------------------------------------------------------------------


def _shrink(n: int, steps: int) -> int:
    """Fewest non-CLS tokens left from ``n`` after ``steps`` maximal merges (each keeps ceil(n/2))."""
    for _ in range(steps):
        n -= n // 2
    return n


def min_reachable(*, num_tokens: int, depth: int) -> int:
    """Smallest kept count reachable from ``num_tokens`` non-CLS tokens in ``depth`` merging layers."""
    return _shrink(num_tokens, depth)


def merge_schedule(
    *, num_tokens: int, num_keep: int, depth: int, first_to_last: float = 3.0
) -> tuple[int, ...]:
    """Tokens merged per layer, r_1..r_depth, summing exactly to ``num_tokens − num_keep``.

    Rule: the ideal schedule is a linear ramp, layer l (0-based) weighted
    ``w_l = 1 + (first_to_last − 1)·(depth − 1 − l)/(depth − 1)`` (the first layer merges
    ``first_to_last`` times as many tokens as the last), scaled to the total and rounded by largest
    remainder (ties to earlier layers). E.g. L=256, K=144, depth 12 gives
    (14, 13, 12, 12, 11, 10, 9, 8, 7, 6, 6, 4); the authors use 12,14,13,...,5,5.
    The ramp is then made feasible layer by layer: with N non-CLS tokens left a layer can merge at
    most floor(N/2) (:func:`max_mergeable` with [CLS] protected); each layer merges its ideal amount
    plus whatever earlier layers still owe (excess moves to later layers), clamped to at least what
    the remaining layers could not absorb even merging maximally (so excess moves earlier when
    later layers are too small). Raises :class:`ConfigError` when ``num_keep`` is unreachable.
    """
    _check_schedule_args(num_tokens=num_tokens, num_keep=num_keep, depth=depth)
    if first_to_last < 1.0:
        raise ConfigError(f"first_to_last={first_to_last} must be >= 1 (a ramp down)")
    return _merge_schedule(num_tokens, num_keep, depth, float(first_to_last))


def _check_schedule_args(*, num_tokens: int, num_keep: int, depth: int) -> None:
    if depth < 1:
        raise ConfigError(f"depth={depth} must be >= 1")
    if num_tokens < 1:
        raise ConfigError(f"num_tokens={num_tokens} must be >= 1")
    if not 1 <= num_keep <= num_tokens:
        raise ConfigError(f"num_keep={num_keep} must be in [1, {num_tokens}] (num_tokens)")
    smallest = min_reachable(num_tokens=num_tokens, depth=depth)
    if num_keep < smallest:
        raise ConfigError(
            f"num_keep={num_keep} is unreachable from {num_tokens} tokens in {depth} merging "
            f"layers (at most half merge per layer); valid: {smallest}..{num_tokens}"
        )


def _ramp(total: int, depth: int, first_to_last: float) -> list[int]:
    """Integers summing to ``total``, proportional to a linear ramp (largest remainder)."""
    if depth == 1:
        return [total]
    weights = [1 + (first_to_last - 1) * (depth - 1 - i) / (depth - 1) for i in range(depth)]
    exact = [total * w / sum(weights) for w in weights]
    out = [math.floor(e) for e in exact]
    by_remainder = sorted(range(depth), key=lambda i: (-(exact[i] - out[i]), i))
    for i in by_remainder[: total - sum(out)]:
        out[i] += 1
    return out


@lru_cache(maxsize=4096)
def _merge_schedule(
    num_tokens: int, num_keep: int, depth: int, first_to_last: float
) -> tuple[int, ...]:
    ideal = _ramp(num_tokens - num_keep, depth, first_to_last)
    schedule: list[int] = []
    n, owed = num_tokens, 0
    for layer in range(depth):
        remaining = n - num_keep  # still to merge, this layer and later ones
        later = depth - 1 - layer
        cap = min(n // 2, remaining)
        # Smallest r such that the later layers, merging maximally, can finish the job.
        # (n - _shrink(n - r, later) is non-decreasing in r, so bisect.)
        low, high = 0, cap
        while low < high:
            mid = (low + high) // 2
            if n - _shrink(n - mid, later) >= remaining:
                high = mid
            else:
                low = mid + 1
        r = min(max(ideal[layer] + owed, low), cap)
        owed += ideal[layer] - r
        schedule.append(r)
        n -= r
    assert n == num_keep, (num_tokens, num_keep, depth, schedule)
    return tuple(schedule)


# ---------------------------------------------------------------------------------------------
# Kept-count sampling for training
# ---------------------------------------------------------------------------------------------

K_CANDIDATES: dict[str, tuple[int, ...]] = {
    "G": (225, 256, 289, 324, 361, 400, 441, 484, 529),
    "GR": (121, 144, 169, 196, 225, 256),
    "R": (49, 64, 81, 100, 121, 144),
}
K_NOMINAL: dict[str, int] = {"G": 256, "GR": 144, "R": 64}


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

    ``weights`` are Gaussian in *candidate index* units: w_i ∝ exp(−(i − i_nominal)² / (2·sigma²)).
    With the default sigma 0.8 the nominal K is drawn about half the time and its neighbours most of
    the rest. A draw depends only on (seed, step): ``numpy.random.default_rng([seed, step])``, so
    ranks agree without communicating and a resumed run repeats the same K sequence.
    """

    candidates: tuple[int, ...]
    nominal: int
    sigma: float = 0.8
    seed: int = 0

    def __post_init__(self) -> None:
        cands = tuple(int(c) for c in self.candidates)
        object.__setattr__(self, "candidates", cands)
        if not cands or any(c < 1 for c in cands) or list(cands) != sorted(set(cands)):
            raise ConfigError(f"candidates={cands} must be distinct positive ints, increasing")
        if self.nominal not in cands:
            raise ConfigError(f"nominal={self.nominal} must be one of candidates={cands}")
        if not self.sigma > 0:
            raise ConfigError(f"sigma={self.sigma} must be > 0 (candidate-index units)")
        if self.seed < 0:
            raise ConfigError(f"seed={self.seed} must be >= 0")

    @classmethod
    def from_preset(cls, name: str, *, sigma: float = 0.8, seed: int = 0) -> KSampler:
        """One of ``K_CANDIDATES`` ("G", "GR", "R") with its nominal K."""
        if name not in K_CANDIDATES:
            raise ConfigError(f"K preset {name!r} is unknown; valid: {sorted(K_CANDIDATES)}")
        return cls(candidates=K_CANDIDATES[name], nominal=K_NOMINAL[name], sigma=sigma, seed=seed)

    @property
    def weights(self) -> tuple[float, ...]:
        """Probabilities of the candidates (sum to 1)."""
        center = self.candidates.index(self.nominal)
        raw = [math.exp(-((i - center) ** 2) / (2 * self.sigma**2)) for i in range(len(self.candidates))]
        return tuple(w / sum(raw) for w in raw)

    def sample(self, step: int) -> int:
        """K for global step ``step`` (>= 0)."""
        if step < 0:
            raise ValueError(f"step={step} must be >= 0")
        u = np.random.default_rng([self.seed, step]).random()
        index = int(np.searchsorted(np.cumsum(self.weights), u, side="right"))
        return self.candidates[min(index, len(self.candidates) - 1)]
