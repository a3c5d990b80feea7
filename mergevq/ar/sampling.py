"""Sampling from MergeAR with a static KV cache (DESIGN §5).

``generate`` runs the prefix once, then L raster steps; each step samples the sub-tokens of one token
in order through the intra-token head and feeds the token back through the cache. Classifier-free
guidance doubles the batch: rows ``[0, B)`` are conditional, rows ``[B, 2B)`` use the null class, and
both halves are fed the same sampled tokens. Guided logits per sub-token s:
``u + scale_s · (c - u)`` (``scale_s`` = ``cfg_scale[s]``, or with ``cfg_schedule="linear"`` ramped
from 1 at the first token to ``cfg_scale[s]`` at the last).

Per-sub-token settings. ``cfg_scale``, ``temperature``, ``top_k`` and ``top_p`` each take one value
for every sub-token or a tuple with one value per sub-token, sub-token 0 (the first one sampled, the
low bits) first. This is how the authors' sampler reads its comma lists: their XL recipe
``-t 1.1,1.0 -k 0,0 -p 1.0,1.0 --cfg_scale 1.75,1.85`` is temperature 1.1 / guidance 1.75 on
sub-token 0 and 1.0 / 1.85 on sub-token 1, constant over the L steps.

Per-sample randomness: every draw of sample b is the inverse CDF of one uniform taken from a
``torch.Generator`` seeded with ``seeds[b]`` (all L × n_sub uniforms drawn up front, on the CPU), so a
sample depends only on its seed, label and K, not on the batch size, its position in the batch or the
number of devices (up to the float rounding of batched matmuls).

Exact-K (``SamplingSettings(exact_k=True)``, off by default: the paper samples freely). Once a row holds
K distinct indices (its ``num_keep``), every later token must repeat one of them: sub-token s is drawn
from the guided, temperature / top-k / top-p filtered distribution restricted to the values that keep the
token equal to some index already produced, given the sub-tokens s' < s already drawn (a softmax over the
allowed set). Every sample then has at most K distinct indices (exactly K when the model would have made
more), draws before the K-th distinct token are the free mode's, and the compressed cache has the fixed
capacity P + K + w. Free mode keeps the paper's behaviour; its compressed cache grows (between steps,
after one host read of the smallest free-slot count every f steps) if a row makes more than K.

The decode step. One raster step (sample a token's sub-tokens, feed it through every layer, write the
cache) has static shapes and no host synchronisation: the position, RoPE row, eviction column and slot
choice are tensors in the cache (:mod:`mergevq.ar.kv_cache`), so ``compile=True`` runs it as one
``torch.compile(fullgraph=True)`` graph (on CUDA ``mode="reduce-overhead"``: CUDA graphs). ``compile``
defaults to on for CUDA and off for the CPU (compiling takes minutes there and gains little over the
eager step, whose linear layers use pre-packed oneDNN weights: :func:`mergevq.ar.model.packed_linears`).
Attention reads only the slots that can be held at this step (:meth:`KVCache.span`).

``teacher_forced_decode`` drives the same cached path with given tokens; the tests use it to check the
exactness contract (cached logits == one teacher-forced pass with the training mask).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from mergevq.ar.kv_cache import IntraCache, KVCache
from mergevq.ar.model import MergeAR, packed_linears
from mergevq.tokenizer.quantizer import indices_to_subtokens, subtokens_to_indices


PER_SUB_TOKEN = ("cfg_scale", "temperature", "top_k", "top_p")
"""The settings that take one value for all sub-tokens or one value per sub-token."""


@dataclass(frozen=True)
class SubTokenSampling:
    """The settings that apply to one sub-token (see :meth:`SamplingSettings.for_sub_tokens`)."""

    cfg_scale: float
    temperature: float
    top_k: int
    top_p: float


@dataclass(frozen=True)
class SamplingSettings:
    """Each of ``cfg_scale``, ``temperature``, ``top_k``, ``top_p``: one value for every sub-token, or a
    tuple with one value per sub-token (a 1-tuple counts as one value)."""

    cfg_scale: float | tuple[float, ...] = 1.0  # 1.0 = no guidance
    cfg_schedule: str = "constant"  # "constant" | "linear" (ramps from 1 to cfg_scale over the L steps)
    temperature: float | tuple[float, ...] = 1.0  # 0 = greedy (argmax)
    top_k: int | tuple[int, ...] = 0  # 0 = off
    top_p: float | tuple[float, ...] = 1.0  # 1 = off
    exact_k: bool = False  # once a row holds K distinct indices, only repeat them (see the module docstring)

    def __post_init__(self) -> None:
        if not isinstance(self.exact_k, bool):
            raise ValueError(f"exact_k={self.exact_k!r}: expected true or false")
        if self.cfg_schedule not in ("constant", "linear"):
            raise ValueError(f"cfg_schedule={self.cfg_schedule!r}; valid: constant, linear")
        for name in PER_SUB_TOKEN:
            value = getattr(self, name)
            values = _values(value)
            if not values:
                raise ValueError(f"{name} is an empty list; give one value or one per sub-token")
            kind = int if name == "top_k" else float
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and kind(v) == v for v in values):
                raise ValueError(f"{name}={_shown(value)}: expected {'integers' if kind is int else 'numbers'}")
            # one type per setting (2 and 2.0 are the same setting: the same claim of a sampling folder);
            # lists from configs become tuples (frozen, hashable)
            values = tuple(kind(v) for v in values)
            object.__setattr__(self, name, values if isinstance(value, (tuple, list)) else values[0])
        bad = [f"{name}={_shown(value)}" for name, value, ok in (
            ("temperature", self.temperature, lambda v: v >= 0),
            ("top_k", self.top_k, lambda v: v >= 0),
            ("top_p", self.top_p, lambda v: 0 < v <= 1),
        ) if not all(ok(v) for v in _values(value))]
        if bad:
            raise ValueError(f"need temperature >= 0, top_k >= 0, 0 < top_p <= 1 (per sub-token); got "
                             f"{', '.join(bad)}")

    @property
    def guided(self) -> bool:
        return any(s != 1.0 for s in _values(self.cfg_scale))

    def values(self, name: str, num_sub_tokens: int) -> tuple:
        """``name``'s value per sub-token; a ValueError names the setting and both counts when a list
        does not have ``num_sub_tokens`` entries."""
        given = _values(getattr(self, name))
        if len(given) == 1:
            return given * num_sub_tokens
        if len(given) != num_sub_tokens:
            raise ValueError(f"{name} has {len(given)} values {list(given)} but this MergeAR has {num_sub_tokens} "
                             f"sub-tokens: give one value, or one value per sub-token")
        return given

    def for_sub_tokens(self, num_sub_tokens: int) -> tuple[SubTokenSampling, ...]:
        """The settings of each sub-token; see :meth:`values` for the error on a wrong-length list."""
        columns = [self.values(name, num_sub_tokens) for name in PER_SUB_TOKEN]
        return tuple(SubTokenSampling(*row) for row in zip(*columns, strict=True))

    def scale(self, sub_token: int, *, step: int, length: int) -> float:
        """Guidance scale of ``sub_token`` at token ``step`` (1-based) of ``length``."""
        given = _values(self.cfg_scale)
        full = given[0] if len(given) == 1 else given[sub_token]
        if self.cfg_schedule == "constant" or length == 1:
            return full
        return 1.0 + (full - 1.0) * (step - 1) / (length - 1)


def _values(value: object) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def _shown(value: object) -> str:
    return ",".join(str(v) for v in _values(value))


@dataclass(frozen=True)
class Generated:
    """``indices`` (B, L): the raster index grid (full indices), for ``tokenizer.decode_raster``;
    ``peak_cache_entries`` (B,): most K/V entries held at once per sample (prefix + unique + w at most
    for the compressed cache, P + L - 1 for the full one); ``unique_tokens`` (B,): distinct indices in
    the grid; ``cache_capacity``: slots allocated per row (after any growth)."""

    indices: Tensor
    peak_cache_entries: Tensor
    unique_tokens: Tensor
    cache_capacity: int


@dataclass(frozen=True)
class ForcedDecode:
    """``logits``: per sub-token (B, L, 2**bits_s) from the cached path; ``entries`` (B, L - 1): entries
    held after feeding t_i (column i - 1); ``peak_cache_entries`` (B,); ``cache_capacity``."""

    logits: tuple[Tensor, ...]
    entries: Tensor
    peak_cache_entries: Tensor
    cache_capacity: int


def _as_batch(value: int | Tensor, batch: int, device: torch.device) -> Tensor:
    """An int, a 0-d or a (B,) tensor -> (B,) int64 on ``device``."""
    value = torch.as_tensor(value, dtype=torch.long, device=device)
    if value.ndim == 0:
        return value.expand(batch)
    if value.shape != (batch,):
        raise ValueError(f"num_keep must be an int or (B={batch},), got shape {tuple(value.shape)}")
    return value


def per_sample_uniforms(seeds: Tensor, *, steps: int, draws: int) -> Tensor:
    """(B,) seeds -> (B, steps, draws) float64 uniforms in [0, 1), row b from ``Generator(seeds[b])``."""
    rows = []
    for seed in seeds.tolist():
        generator = torch.Generator().manual_seed(int(seed))
        rows.append(torch.rand(steps, draws, generator=generator, dtype=torch.float64))
    return torch.stack(rows)


def pick(logits: Tensor, uniforms: Tensor, *, temperature: float, top_k: int, top_p: float) -> Tensor:
    """``logits`` (B, V), ``uniforms`` (B,) -> (B,) sampled ids: argmax when ``temperature == 0``, else
    the inverse CDF of the temperature / top-k / top-p filtered softmax at each row's uniform."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = logits.softmax(dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass strictly ahead of each id
        sorted_probs = sorted_probs.masked_fill(before >= top_p, 0.0)  # the top id always stays
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    cdf = probs.double().cumsum(dim=-1)  # (B, V)
    target = uniforms.to(cdf)[:, None] * cdf[:, -1:]
    return torch.searchsorted(cdf, target, right=True).clamp_(max=logits.shape[-1] - 1)[:, 0]


def allowed_sub_tokens(produced: Tensor, valid: Tensor, given: Tensor, *, bits: tuple[int, ...]) -> Tensor:
    """Exact-K: which values of sub-token ``s = given.shape[1]`` keep the token equal to an index already
    produced. ``produced`` (B, L) indices, ``valid`` (B, L) or (L,) which of them count, ``given`` (B, s)
    the sub-tokens drawn so far -> (B, 2**bits[s]) bool."""
    sub = indices_to_subtokens(produced, bits)  # (B, L, n_sub)
    s = given.shape[1]
    consistent = valid & (sub[..., :s] == given[:, None, :]).all(dim=-1)  # (B, L)
    # scatter_add, not scatter: equal ids with different flags must not race
    hits = torch.zeros(produced.shape[0], 2 ** bits[s], dtype=torch.float32, device=produced.device)
    return hits.scatter_add_(1, sub[..., s], consistent.float()) > 0


def _guidance(settings: SamplingSettings, sub_token: int, step: Tensor, length: int) -> float | Tensor:
    """The guidance scale of ``sub_token`` at token ``step`` (a 0-d tensor): in-graph for the ramp."""
    given = _values(settings.cfg_scale)
    full = given[0] if len(given) == 1 else given[sub_token]
    if settings.cfg_schedule == "constant" or length == 1:
        return full
    return 1.0 + (full - 1.0) * (step - 1).float() / (length - 1)


def _sample_token(model: MergeAR, hidden: Tensor, run: _Run, settings: SamplingSettings,
                  per_sub: tuple[SubTokenSampling, ...], restrict: bool) -> Tensor:
    """Sample t_step (``step`` = the cache's position tensor) from ``hidden`` (rows, D), write it into
    ``run.out`` and count it; returns it as (B,). Sub-tokens in order through the intra-token head;
    CFG mixes the two halves of the rows; exact-K restricts the draws once a row holds K distinct indices.
    ``restrict`` (host-side): whether exact-K applies at this step at all (some row may hold K distinct
    indices); False before the smallest K's step, so those steps skip its work."""
    batch, rows = run.out.shape[0], hidden.shape[0]
    step = run.cache.step
    column = (step - 1).view(1)
    uniforms = run.uniforms.index_select(1, column)[:, 0]  # (B, n_sub)
    bits = model.config.sub_token_bits
    earlier = run.columns < step - 1  # (L,) tokens produced so far
    if restrict:
        full_rows = (run.distinct >= run.num_keep)[:, None]  # (B, 1): rows holding K distinct indices
    given = torch.zeros(rows, 0, dtype=torch.long, device=hidden.device)
    for s, sub_settings in enumerate(per_sub):
        logits = model.next_sub_token_logits(hidden, given, cache=run.intra).float()  # (rows, 2**bits_s)
        if rows != batch:  # CFG: conditional half, null half
            cond, uncond = logits[:batch], logits[batch:]
            logits = uncond + _guidance(settings, s, step, model.num_tokens) * (cond - uncond)
        if restrict:
            allowed = allowed_sub_tokens(run.out, earlier, given[:batch], bits=bits)  # (B, 2**bits_s)
            logits = logits.masked_fill(full_rows & ~allowed, float("-inf"))
        sub = pick(logits, uniforms[:, s], temperature=sub_settings.temperature, top_k=sub_settings.top_k,
                   top_p=sub_settings.top_p)  # (B,)
        given = torch.cat([given, sub.repeat(rows // batch)[:, None]], dim=1)
    token = subtokens_to_indices(given[:batch], bits)  # (B,)
    first = ~((run.out == token[:, None]) & earlier).any(dim=1)
    run.distinct.add_(first.long())
    run.out.index_copy_(1, column, token[:, None])
    return token


def _token_step(model: MergeAR, hidden: Tensor, run: _Run, settings: SamplingSettings,
                per_sub: tuple[SubTokenSampling, ...], span: int, restrict: bool) -> Tensor:
    """One raster step: sample t_step, feed it (both CFG halves) through the cache; returns the hidden
    state that predicts t_{step+1}. Static shapes, no host synchronisation."""
    token = _sample_token(model, hidden, run, settings, per_sub, restrict)
    return model.decode_step(token.repeat(hidden.shape[0] // token.shape[0]), cache=run.cache, span=span)


def _feed(model: MergeAR, tokens: Tensor, cache: KVCache, span: int) -> Tensor:
    return model.decode_step(tokens, cache=cache, span=span)


_COMPILED: dict[tuple[str, bool], Callable] = {}


def _compiled(fn: Callable, device: torch.device) -> Callable:
    """``fn`` compiled whole (``fullgraph=True``: a graph break or host sync is an error); on CUDA with
    CUDA graphs (``mode="reduce-overhead"``)."""
    key = (fn.__name__, device.type == "cuda")
    if key not in _COMPILED:
        mode = "reduce-overhead" if device.type == "cuda" else None
        _COMPILED[key] = torch.compile(fn, fullgraph=True, dynamic=False, mode=mode)
    return _COMPILED[key]


def use_compile(compile: bool | None, device: torch.device) -> bool:
    """The compile switch: None = the default for the device (on for CUDA; off on CPU, where compiling
    a decode step costs more than it saves on a sampling run of usual size)."""
    return device.type == "cuda" if compile is None else compile


def _step_mark(device: torch.device, compiled: bool) -> None:
    if compiled and device.type == "cuda":
        torch.compiler.cudagraph_mark_step_begin()  # the previous replay's outputs were consumed


@dataclass
class _Run:
    """The static buffers one ``generate`` call updates in place (they keep their address: CUDA graphs)."""

    cache: KVCache
    intra: IntraCache  # the intra-token transformer's K/V within one step
    out: Tensor  # (B, L) sampled indices
    uniforms: Tensor  # (B, L, n_sub) float64
    num_keep: Tensor  # (B,) K of the conditional rows
    distinct: Tensor  # (B,) distinct indices produced so far
    columns: Tensor  # (L,) arange

    def mark_static(self) -> None:
        if self.out.device.type == "cuda":
            for t in (self.out, self.uniforms, self.num_keep, self.distinct, self.columns):
                torch._dynamo.mark_static_address(t)


@torch.no_grad()
def generate(model: MergeAR, *, labels: Tensor, num_keep: int | Tensor, seeds: Tensor, settings: SamplingSettings,
             compressed_cache: bool = True, compile: bool | None = None) -> Generated:
    """Sample ``len(labels)`` raster index grids; see the module docstring for CFG, seeding, exact-K
    and ``compile`` (None: on for CUDA, off for CPU)."""
    cfg = model.config
    per_sub = settings.for_sub_tokens(len(cfg.sub_token_bits))  # a wrong-length list fails before any work
    device = model.class_embedding.weight.device
    batch, length = labels.shape[0], model.num_tokens
    labels = labels.to(device=device, dtype=torch.long)
    num_keep = _as_batch(num_keep, batch, device)
    if seeds.shape != (batch,):
        raise ValueError(f"seeds must be (B={batch},), got {tuple(seeds.shape)}")
    row_keep = num_keep
    if settings.guided:
        labels = torch.cat([labels, torch.full_like(labels, model.null_class)])
        num_keep = torch.cat([num_keep, num_keep])
    uniforms = per_sample_uniforms(seeds, steps=length, draws=len(cfg.sub_token_bits)).to(device)
    # host reads before the loop: the bound that sizes the compressed cache (and, below, the smallest K)
    cache = model.new_cache(batch=labels.shape[0], compressed=compressed_cache, max_unique=int(num_keep.max()),
                            bounded=settings.exact_k)
    run = _Run(cache=cache, intra=model.new_intra_cache(rows=labels.shape[0]),
               out=torch.zeros(batch, length, dtype=torch.long, device=device), uniforms=uniforms,
               num_keep=row_keep.clone(), distinct=torch.zeros(batch, dtype=torch.long, device=device),
               columns=torch.arange(length, device=device))
    run.mark_static()
    # t_j can only be restricted once a row may hold K distinct indices, i.e. from j = K + 1 on (the
    # smallest K): two host-known phases, so the compiled step has at most two graphs
    first_restricted = int(row_keep.min()) + 1 if settings.exact_k else length + 1

    def restricts(position: int) -> bool:
        return position >= first_restricted

    compiled = use_compile(compile, device)
    step_fn = _compiled(_token_step, device) if compiled else _token_step
    with contextlib.nullcontext() if compiled else packed_linears(model, rows=labels.shape[0]):
        hidden = model.prefill(labels, num_keep, cache)  # (rows, D): predicts t_1
        room = 0
        for _ in range(1, length):
            if room == 0:
                room = cache.room()  # a host read only for the free-mode compressed cache, every `room` steps
            room -= 1
            _step_mark(device, compiled)
            hidden = step_fn(model, hidden, run, settings, per_sub, cache.span(), restricts(cache.fed + 1))
            cache.fed += 1
        _sample_token(model, hidden, run, settings, per_sub, restricts(length))  # t_L: sampled, never fed
    out = run.out
    unique = (out.sort(dim=1).values.diff(dim=1) != 0).sum(dim=1) + 1
    return Generated(indices=out.clone(), peak_cache_entries=cache.peak_entries[:batch].clone(),
                     unique_tokens=unique, cache_capacity=cache.capacity)


@torch.no_grad()
def teacher_forced_decode(model: MergeAR, *, indices: Tensor, labels: Tensor, num_keep: Tensor,
                          compressed_cache: bool = True, max_unique: int | None = None,
                          compile: bool = False) -> ForcedDecode:
    """Feed the given ``indices`` (B, L) step by step through a cache and return the logits of every
    position (what ``generate`` sees), for comparison with ``model(indices, labels, num_keep)``.
    ``compile``: feed through the compiled decode step."""
    batch, length = indices.shape
    device = indices.device
    cache = model.new_cache(batch=batch, compressed=compressed_cache,
                            max_unique=int(num_keep.max()) if max_unique is None else max_unique)
    feed = _compiled(_feed, device) if compile else _feed
    entries = []
    with contextlib.nullcontext() if compile else packed_linears(model, rows=batch):
        hiddens = [model.prefill(labels, num_keep, cache)]
        room = 0
        for position in range(1, length):
            if room == 0:
                room = cache.room()
            room -= 1
            _step_mark(device, compile)
            hiddens.append(feed(model, indices[:, position - 1], cache, cache.span()).clone())
            cache.fed += 1
            entries.append(cache.entries)
    hidden = torch.stack(hiddens, dim=1)  # (B, L, D)
    logits = model.sub_token_logits(hidden.flatten(0, 1), indices.flatten())
    return ForcedDecode(logits=tuple(lg.unflatten(0, (batch, length)) for lg in logits),
                        entries=torch.stack(entries, dim=1), peak_cache_entries=cache.peak_entries.clone(),
                        cache_capacity=cache.capacity)
