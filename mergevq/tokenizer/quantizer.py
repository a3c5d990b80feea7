"""Lookup-free quantization (LFQ) with an exact, memory-light entropy loss (DESIGN §4 step 4).

Codes and indices
-----------------
A ``d``-bit code is a vector ``c ∈ {-1, +1}^d``; its index is little-endian (the Open-MAGVIT2
convention)::

    index = Σ_j bit_j · 2^j,   bit_j = [c_j > 0]

so bits ``[1, 0, 0, ...]`` are index 1 and ``[0, 1, 0, ...]`` index 2. Quantization is
``q = sign(z)`` with **zero mapped to -1** (bit 0), i.e. ``bit_j = [z_j > 0]`` exactly as in the
index formula, so ``codes_to_indices(q) == bits_to_indices(z > 0)`` holds for every ``z``.

Sub-tokens (Stage 2 factorisation): ``split = (6, 12)`` cuts the 18 bits **low bits first**:
sub-token 0 holds bits 0..5 (``index & 63``), sub-token 1 holds bits 6..17 (``index >> 6``); in
general sub-token ``k`` is ``(index >> offset_k) & (2^split_k - 1)`` with ``offset_k`` the sum of
the earlier parts. All conversions here are exact integer round trips (``d <= 62``).

Entropy loss
------------
With bit logits ``l_nj = 4 z_nj / τ``, the code distribution of token ``n``,
``p_n(c) = softmax_c(2 <z_n, c> / τ)`` over all ``2^d`` codes, factorises into ``d`` independent
Bernoullis, ``p_n(bit_j = 1) = sigmoid(l_nj)``. Hence

* per-sample entropy ``H(p_n) = Σ_j h(sigmoid(l_nj))`` (binary entropies, computed with
  ``logsigmoid``), exact and O(d) per token;
* codebook entropy ``H(p̄)``, ``p̄ = mean_n p_n``: split the bits into a low part ``a`` (the first
  ``entropy_split`` bits) and a high part ``b``. ``log p_n^a(c_a) = Σ_{j∈a} [bit_j·logsigmoid(l_nj)
  + (1 - bit_j)·logsigmoid(-l_nj)]`` is one small matmul ``(N, 2 d_a) @ (2 d_a, 2^{d_a})``;
  ``P_a = exp(...)``; the same for ``b``; then ``Σ_n p_n = P_bᵀ P_a`` (one GEMM, shape
  ``(2^{d_b}, 2^{d_a})``). Its row-major flattening is indexed by the little-endian code index
  (``index = i_a + 2^{d_a} · i_b``). No ``N × 2^d`` tensor is ever built.

``entropy_loss = E_n[H(p_n)] - H(p̄)``. Precision: all loss math runs with autocast disabled in
``promote_types(z.dtype, float32)``: fp32 for fp16/bf16/fp32 inputs, fp64 for fp64 inputs (the
tests compare against a float64 brute force).

Distributed
-----------
With ``distributed=True``, an initialised default process group of more than one rank and a training
forward (train mode, autograd on), the token count, the sum of per-sample entropies and the ``Σ_n p_n`` matrix are summed across ranks
(one differentiable all-reduce), so both entropy terms are those of the global batch and do not
depend on the number of ranks. The backward of that all-reduce sums the incoming gradients over the
ranks, so the gradient a rank computes for its own ``z`` is ``world_size ×`` the gradient of the
global entropy loss; DDP's gradient *averaging* divides it back, which makes the entropy term
contribute exactly the global-batch gradient, with the same weight as on one process
(tests/test_quantizer.py checks this with two gloo processes).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from mergevq.errors import ConfigError

__all__ = [
    "LFQ",
    "MAX_BITS",
    "Quantized",
    "bits_to_indices",
    "codes_to_indices",
    "indices_to_bits",
    "indices_to_codes",
    "indices_to_subtokens",
    "mean_code_probs",
    "per_sample_entropy",
    "subtokens_to_indices",
    "summed_code_probs",
]

MAX_BITS = 62  # indices are int64; keep 2^d representable with room to spare


# --------------------------------------------------------------------------------------------------
# index <-> bits <-> codes <-> sub-tokens


def _check_bits(d: int) -> None:
    if isinstance(d, bool) or not isinstance(d, int) or not 1 <= d <= MAX_BITS:
        raise ValueError(f"number of bits must be an int in [1, {MAX_BITS}], got {d!r}")


def _bit_weights(d: int, device: torch.device) -> Tensor:
    # (d,) int64: 2^0, 2^1, ..., 2^(d-1)  (little-endian)
    return torch.ones((), dtype=torch.int64, device=device) << torch.arange(d, device=device)


def _check_split(split: Sequence[int], d: int | None = None) -> tuple[int, ...]:
    parts = tuple(split)
    if not parts or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in parts):
        raise ValueError(
            f"sub-token split must be a non-empty list of positive ints, got {split!r}"
        )
    if sum(parts) > MAX_BITS:
        raise ValueError(f"sub-token split {list(parts)} has more than {MAX_BITS} bits")
    if d is not None and sum(parts) != d:
        raise ValueError(f"sub-token split {list(parts)} sums to {sum(parts)}, expected {d} bits")
    return parts


def bits_to_indices(bits: Tensor) -> Tensor:
    """``(..., d)`` bits (bool or 0/1) -> ``(...)`` int64 indices, ``index = Σ_j bit_j · 2^j``."""
    if bits.ndim < 1:
        raise ValueError("bits must have a trailing bit dimension (..., d)")
    d = bits.shape[-1]
    _check_bits(d)
    return (bits.to(torch.int64) * _bit_weights(d, bits.device)).sum(dim=-1)


def indices_to_bits(indices: Tensor, d: int) -> Tensor:
    """``(...)`` indices in ``[0, 2^d)`` -> ``(..., d)`` bool bits; bit j = ``(index >> j) & 1``."""
    _check_bits(d)
    if indices.dtype.is_floating_point or indices.dtype.is_complex or indices.dtype == torch.bool:
        raise ValueError(f"indices must be an integer tensor, got {indices.dtype}")
    shifts = torch.arange(d, device=indices.device)
    return ((indices.to(torch.int64).unsqueeze(-1) >> shifts) & 1).bool()  # (..., d)


def indices_to_codes(indices: Tensor, d: int, *, dtype: torch.dtype = torch.float32) -> Tensor:
    """``(...)`` indices -> ``(..., d)`` codes in ``{-1, +1}`` (bit 1 -> +1, bit 0 -> -1)."""
    return indices_to_bits(indices, d).to(dtype) * 2 - 1


def codes_to_indices(codes: Tensor) -> Tensor:
    """``(..., d)`` codes (or any real vectors) -> ``(...)`` indices of ``sign`` with 0 -> bit 0."""
    return bits_to_indices(codes > 0)


def indices_to_subtokens(indices: Tensor, split: Sequence[int] = (6, 12)) -> Tensor:
    """``(...)`` indices -> ``(..., len(split))`` int64 sub-tokens, low bits first.

    Sub-token ``k`` is ``(index >> offset_k) & (2^split[k] - 1)``, ``offset_k = sum(split[:k])``;
    with the default ``(6, 12)``: sub-token 0 = bits 0..5, sub-token 1 = bits 6..17.
    """
    parts = _check_split(split)
    if indices.dtype.is_floating_point or indices.dtype.is_complex or indices.dtype == torch.bool:
        raise ValueError(f"indices must be an integer tensor, got {indices.dtype}")
    offsets = torch.tensor([sum(parts[:k]) for k in range(len(parts))], device=indices.device)
    masks = torch.tensor([(1 << s) - 1 for s in parts], device=indices.device)
    return (indices.to(torch.int64).unsqueeze(-1) >> offsets) & masks  # (..., K)


def subtokens_to_indices(subtokens: Tensor, split: Sequence[int] = (6, 12)) -> Tensor:
    """``(..., len(split))`` sub-tokens (each in ``[0, 2^split[k])``) -> ``(...)`` int64 indices."""
    parts = _check_split(split)
    if subtokens.ndim < 1 or subtokens.shape[-1] != len(parts):
        raise ValueError(
            f"sub-tokens must have a trailing dimension of {len(parts)} for split {list(parts)}, "
            f"got shape {tuple(subtokens.shape)}"
        )
    offsets = torch.tensor([sum(parts[:k]) for k in range(len(parts))], device=subtokens.device)
    return (subtokens.to(torch.int64) << offsets).sum(dim=-1)


# --------------------------------------------------------------------------------------------------
# entropy pieces (pure functions of the bit logits l = 4 z / τ)


def per_sample_entropy(logits: Tensor) -> Tensor:
    """``(..., d)`` bit logits -> ``(...)`` entropy (nats) of the product of Bernoullis, exact."""
    log_p1 = F.logsigmoid(logits)  # log p(bit = 1)
    log_p0 = F.logsigmoid(-logits)  # log p(bit = 0)
    return -(log_p1.exp() * log_p1 + log_p0.exp() * log_p0).sum(dim=-1)


def _half_code_probs(log_p1: Tensor, log_p0: Tensor) -> Tensor:
    """``(M, k)`` log bit probabilities -> ``(M, 2^k)`` probabilities of the ``2^k`` sub-codes.

    Column ``i`` is the sub-code with bits ``(i >> j) & 1``; one matmul of the stacked log
    probabilities with the stacked bit / not-bit matrix.
    """
    k = log_p1.shape[-1]
    device = log_p1.device
    bits = (torch.arange(1 << k, device=device).unsqueeze(-1) >> torch.arange(k, device=device)) & 1
    bits = bits.to(log_p1.dtype).t()  # (k, 2^k); k = 0 gives the single empty sub-code
    selector = torch.cat([bits, 1 - bits], dim=0)  # (2k, 2^k)
    # exp in place: the matmul's backward needs only its inputs, so its output buffer is reused
    # (one (M, 2^k) matrix less at the peak)
    return (torch.cat([log_p1, log_p0], dim=-1) @ selector).exp_()  # (M, 2^k)


def summed_code_probs(logits: Tensor, entropy_split: int) -> Tensor:
    """``(M, d)`` bit logits -> ``Σ_n p_n`` as a ``(2^{d-s}, 2^s)`` matrix, ``s = entropy_split``.

    Entry ``[i_b, i_a]`` belongs to the code index ``i_a + 2^s · i_b``, so ``.reshape(-1)`` is in
    code-index order. Memory: two ``(M, 2^s)`` / ``(M, 2^{d-s})`` matrices plus the result.
    """
    if logits.ndim != 2:
        raise ValueError(f"logits must be (tokens, bits), got shape {tuple(logits.shape)}")
    d = logits.shape[-1]
    if not 0 <= entropy_split <= d:
        raise ValueError(f"entropy_split must be in [0, {d}], got {entropy_split}")
    log_p1 = F.logsigmoid(logits)  # (M, d)
    log_p0 = F.logsigmoid(-logits)  # (M, d)
    s = entropy_split
    probs_a = _half_code_probs(log_p1[:, :s], log_p0[:, :s])  # (M, 2^s)       low bits
    probs_b = _half_code_probs(log_p1[:, s:], log_p0[:, s:])  # (M, 2^(d-s))   high bits
    return probs_b.t() @ probs_a  # (2^(d-s), 2^s): the one GEMM


def mean_code_probs(z: Tensor, *, temperature: float, entropy_split: int | None = None) -> Tensor:
    """``(..., d)`` pre-quantization vectors -> ``(2^d,)`` mean code distribution, code-index order.

    Local to this process (no all-reduce); computed in ``promote_types(z.dtype, float32)``.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature!r}")
    d = z.shape[-1]
    dtype = torch.promote_types(z.dtype, torch.float32)
    logits = z.reshape(-1, d).to(dtype) * (4.0 / temperature)  # (M, d)
    split = d // 2 if entropy_split is None else entropy_split
    return summed_code_probs(logits, split).reshape(-1) / logits.shape[0]  # (2^d,)


def _entropy(probs: Tensor) -> Tensor:
    """Entropy (nats) of a probability tensor (all entries); 0 log 0 = 0, with a finite gradient."""
    tiny = torch.finfo(probs.dtype).tiny
    return -(probs * probs.clamp_min(tiny).log()).sum()


def _distributed_world() -> int:
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size()


def _all_reduce_sum(tensor: Tensor) -> Tensor:
    # Differentiable all-reduce; its backward all-reduces the gradient (see the module docstring).
    # torch >= 2.5 flags this function as deprecated, but its suggested replacement is private and
    # has no autograd on older torch (NPU builds), so keep it and silence the FutureWarning.
    import torch.distributed.nn.functional as dist_fn

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return dist_fn.all_reduce(tensor, op=dist.ReduceOp.SUM)


# --------------------------------------------------------------------------------------------------
# module


@dataclass(frozen=True)
class Quantized:
    """Output of :class:`LFQ`. Scalars are 0-d tensors in the loss dtype (fp32, or fp64 input)."""

    codes: Tensor  # (B, N, d) exactly ±1, z's dtype, straight-through gradient
    indices: Tensor  # (B, N) int64, little-endian
    commit_loss: Tensor  # mean (z - sg(q))^2
    entropy_loss: Tensor  # per_sample_entropy - codebook_entropy (global batch under DDP)
    per_sample_entropy: Tensor  # E_n H(p_n), nats
    codebook_entropy: Tensor  # H(E_n p_n), nats


class LFQ(nn.Module):
    """Lookup-free quantizer over the implicit codebook ``{-1, +1}^dim`` (``2^dim`` codes).

    No parameters. ``forward(z)`` takes ``(B, N, dim)`` (any leading shape works) and returns a
    :class:`Quantized`. See the module docstring for conventions and the entropy computation.

    Args:
        dim: bits per token ``d``; the codebook has ``2^d`` entries.
        entropy_temperature: ``τ`` of ``p_n(c) = softmax(2 <z_n, c> / τ)``.
        sub_token_bits: Stage 2 split of the bits, low bits first (must sum to ``dim``).
        entropy_split: bits in the low half of the split GEMM (default ``dim // 2``).
        distributed: sum the entropy statistics over ranks when a process group is initialised.
    """

    def __init__(
        self,
        *,
        dim: int = 18,
        entropy_temperature: float = 0.01,
        sub_token_bits: Sequence[int] = (6, 12),
        entropy_split: int | None = None,
        distributed: bool = True,
    ) -> None:
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= MAX_BITS:
            raise ConfigError(f"LFQ: dim must be an int in [1, {MAX_BITS}], got {dim!r}")
        if not isinstance(entropy_temperature, (int, float)) or not (
            math.isfinite(entropy_temperature) and entropy_temperature > 0
        ):
            raise ConfigError(
                f"LFQ: entropy_temperature must be a positive number, got {entropy_temperature!r}"
            )
        try:
            parts = _check_split(sub_token_bits, dim)
        except ValueError as err:
            raise ConfigError(f"LFQ: sub_token_bits: {err}") from None
        split = dim // 2 if entropy_split is None else entropy_split
        if isinstance(split, bool) or not isinstance(split, int) or not 0 <= split <= dim:
            raise ConfigError(
                f"LFQ: entropy_split must be an int in [0, {dim}], got {entropy_split!r}"
            )
        self.dim = dim
        self.entropy_temperature = float(entropy_temperature)
        self.sub_token_bits = parts
        self.entropy_split = split
        self.distributed = bool(distributed)

    @property
    def codebook_size(self) -> int:
        return 1 << self.dim

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, entropy_temperature={self.entropy_temperature}, "
            f"sub_token_bits={list(self.sub_token_bits)}, entropy_split={self.entropy_split}, "
            f"distributed={self.distributed}"
        )

    def indices_to_codes(self, indices: Tensor, *, dtype: torch.dtype = torch.float32) -> Tensor:
        """``(...)`` indices -> ``(..., dim)`` codes in ``{-1, +1}``."""
        return indices_to_codes(indices, self.dim, dtype=dtype)

    def to_subtokens(self, indices: Tensor) -> Tensor:
        """``(...)`` indices -> ``(..., len(sub_token_bits))`` sub-tokens, low bits first."""
        return indices_to_subtokens(indices, self.sub_token_bits)

    def from_subtokens(self, subtokens: Tensor) -> Tensor:
        """``(..., len(sub_token_bits))`` sub-tokens -> ``(...)`` indices."""
        return subtokens_to_indices(subtokens, self.sub_token_bits)

    def forward(self, z: Tensor) -> Quantized:
        if z.ndim < 1 or z.shape[-1] != self.dim:
            raise ValueError(f"LFQ expects (..., {self.dim}) inputs, got shape {tuple(z.shape)}")
        if not z.dtype.is_floating_point:
            raise ValueError(f"LFQ expects a floating-point input, got {z.dtype}")
        positive = z > 0  # (B, N, d) bits; 0 -> bit 0 -> code -1
        indices = bits_to_indices(positive)  # (B, N)
        q = positive.to(z.dtype) * 2 - 1  # (B, N, d) in {-1, +1}
        # straight-through: d codes / d z = identity. Written q + (z - sg(z)) rather than
        # z + sg(q - z): same gradient, but the forward value is exactly ±1 (no rounding).
        codes = q + (z - z.detach())  # (B, N, d)

        loss_dtype = torch.promote_types(z.dtype, torch.float32)
        with torch.autocast(device_type=z.device.type, enabled=False):
            zf = z.to(loss_dtype)
            commit_loss = (zf - q.detach().to(loss_dtype)).square().mean()

            logits = zf.reshape(-1, self.dim) * (4.0 / self.entropy_temperature)  # (M, d)
            count = torch.full((1,), logits.shape[0], dtype=loss_dtype, device=z.device)
            entropy_sum = per_sample_entropy(logits).sum().reshape(1)  # (1,)
            prob_sum = summed_code_probs(logits, self.entropy_split)  # (2^(d-s), 2^s)
            # Only training passes synchronise: inference jobs (evaluation, code extraction) run
            # different numbers of forwards per rank, and a collective there would deadlock.
            if self.distributed and self.training and torch.is_grad_enabled() and _distributed_world() > 1:
                # one collective: [Σ_n p_n (flattened), Σ_n H(p_n), token count]
                stats = _all_reduce_sum(torch.cat([prob_sum.reshape(-1), entropy_sum, count]))
                prob_sum, entropy_sum, count = stats[:-2], stats[-2:-1], stats[-1:].detach()
            sample_entropy = (entropy_sum / count).squeeze(0)
            codebook_entropy = _entropy(prob_sum / count)
            entropy_loss = sample_entropy - codebook_entropy

        return Quantized(
            codes=codes,
            indices=indices,
            commit_loss=commit_loss,
            entropy_loss=entropy_loss,
            per_sample_entropy=sample_entropy,
            codebook_entropy=codebook_entropy,
        )
