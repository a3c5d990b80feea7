"""MergeAR: the class-conditional autoregressive generator of Stage 2 (DESIGN §5).

Architecture (LlamaGen with Open-MAGVIT2's factorised output):

* input ``[class, M(K/L), t_1, ..., t_{L-1}]`` (``[class, t_1, ...]`` with ``merge_token=False``):
  the class embedding has a null row (index ``num_classes``) used for classifier-free guidance and
  for class dropout; ``M`` embeds the merge ratio K/L (sinusoidal features -> MLP) so that any K can
  be asked for at sampling; a token's embedding is the sum of its sub-token embeddings;
* a Llama decoder (pre-RMSNorm, SwiGLU, no biases) with 2D RoPE over (row, col) of the raster grid
  (prefix entries are not rotated); attention follows the mask policy of :mod:`mergevq.ar.mask`;
* the hidden state ``h`` that predicts a token feeds a small *intra-token* transformer (causal, 1D
  RoPE over the sub-token axis) on ``[h, e_0(s_0), ..., e_{n-2}(s_{n-2})]``; its output ``k`` predicts
  sub-token ``s_k`` (6 bits, then 12 bits for the default split; low bits first, the tokenizer's
  :func:`~mergevq.tokenizer.quantizer.indices_to_subtokens` convention).

The cached path (``prefill`` / ``decode_step``) runs the same blocks against a
:class:`~mergevq.ar.kv_cache.KVCache`; :mod:`mergevq.ar.sampling` drives it.

Parameter counts (``python benchmarks/ar_param_counts.py``): B 107.1M, L 344.9M (the paper's
343M, +0.6 %), XL 786.1M; tests/test_ar_model.py pins them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from mergevq.ar.kv_cache import IntraCache, KVCache
from mergevq.ar.mask import MaskPolicy
from mergevq.config import check_types
from mergevq.errors import ConfigError, WeightsError
from mergevq.fileio import atomic_write, load_weights_strict
from mergevq.layers.mlp import SwiGLU, swiglu_hidden
from mergevq.layers.norms import RMSNorm
from mergevq.layers.rope import RopeTable, apply_rope, rope_1d, rope_2d
from mergevq.tokenizer.quantizer import indices_to_subtokens

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class MergeARConfig:
    """Everything that defines a MergeAR architecture (serialised as ``config.json``)."""

    dim: int
    depth: int
    heads: int
    intra_depth: int = 2  # intra-token (sub-token) transformer layers, same width as the decoder
    grid: tuple[int, int] = (16, 16)  # raster grid; L = grid[0] * grid[1]
    code_dim: int = 18
    sub_token_bits: tuple[int, ...] = (6, 12)
    num_classes: int = 1000  # + 1 null row for CFG, added internally
    class_dropout: float = 0.1
    token_dropout: float = 0.1
    window: int | None = None  # recent window w; None = one grid row (grid[1])
    mask: Literal["mergear", "causal"] = "mergear"
    merge_token: bool = True  # prefix [class, M(K/L)] when True, [class] when False
    mlp_ratio: float = 4.0
    mlp_multiple_of: int = 256
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    merge_features: int = 256  # sinusoidal features of K/L fed to the M MLP
    init_std: float = 0.02

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def prefix(self) -> int:
        """Prefix entries P: the class token, plus M when ``merge_token``."""
        return 2 if self.merge_token else 1

    @property
    def recent_window(self) -> int:
        return self.grid[1] if self.window is None else self.window

    @property
    def mask_policy(self) -> MaskPolicy:
        return MaskPolicy(prefix=self.prefix, window=self.recent_window if self.mask == "mergear" else None)

    def replace(self, changes: Mapping[str, object]) -> MergeARConfig:
        """A copy with ``changes`` applied; an unknown field is a one-line ConfigError."""
        return config_from_dict({**dataclasses.asdict(self), **changes}, source="overrides")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def config_from_dict(data: Mapping[str, object], *, source: str) -> MergeARConfig:
    """Build and validate a config from plain data (JSON lists become tuples)."""
    fields = {f.name for f in dataclasses.fields(MergeARConfig)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ConfigError(f"{source}: unknown MergeAR config key(s) {', '.join(unknown)}; valid keys: "
                          f"{', '.join(sorted(fields))}")
    missing = sorted({"dim", "depth", "heads"} - set(data))
    if missing:
        raise ConfigError(f"{source}: MergeAR config needs {', '.join(missing)}")
    # A wrong-typed value in somebody's config.json is one line here, not a traceback deep in torch.
    check_types(MergeARConfig, data, origins={name: source for name in data})
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    config = MergeARConfig(**values)
    _validate(config, source=source)
    return config


def _validate(config: MergeARConfig, *, source: str) -> None:
    if config.mask not in ("mergear", "causal"):
        raise ConfigError(f"{source}: mask={config.mask!r}; valid: mergear, causal")
    if config.dim % config.heads or (config.dim // config.heads) % 4:
        raise ConfigError(f"{source}: dim={config.dim} / heads={config.heads} must give a head width divisible "
                          f"by 4 (2D RoPE)")
    if sum(config.sub_token_bits) != config.code_dim:
        raise ConfigError(f"{source}: sub_token_bits={list(config.sub_token_bits)} must sum to "
                          f"code_dim={config.code_dim}")
    if len(config.grid) != 2 or min(config.grid) < 1:
        raise ConfigError(f"{source}: grid={config.grid!r} must be two positive ints (rows, cols)")
    if config.window is not None and config.window < 1:
        raise ConfigError(f"{source}: window={config.window} must be >= 1 or null (one grid row)")
    for name in ("class_dropout", "token_dropout"):
        if not 0.0 <= getattr(config, name) < 1.0:
            raise ConfigError(f"{source}: {name}={getattr(config, name)} must be in [0, 1)")
    if config.depth < 1 or config.intra_depth < 1 or config.num_classes < 1:
        raise ConfigError(f"{source}: depth, intra_depth and num_classes must be >= 1")


PRESETS: dict[str, MergeARConfig] = {
    # tests and the CPU demo: the tiny tokenizers' 8x8 grid, the 10 demo classes
    "tiny": MergeARConfig(dim=64, depth=2, heads=4, intra_depth=1, grid=(8, 8), num_classes=10,
                          mlp_multiple_of=32, merge_features=32),
    "B": MergeARConfig(dim=768, depth=12, heads=12),
    "L": MergeARConfig(dim=1024, depth=24, heads=16),
    "XL": MergeARConfig(dim=1280, depth=36, heads=20),
}


def build_config(*, preset: str, changes: Mapping[str, object] | None = None) -> MergeARConfig:
    """Config-file entry point: ``{target: mergevq.ar.model.build_config, params: {preset: L,
    changes: {grid: [16, 16]}}}``. An unknown preset or field is a one-line ConfigError."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown MergeAR preset {preset!r}; valid: {', '.join(PRESETS)}")
    return PRESETS[preset].replace(changes) if changes else PRESETS[preset]


# --------------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AROutput:
    """``logits``: one ``(B, L, 2**bits_s)`` per sub-token; ``loss``: sum over sub-tokens of the mean
    cross-entropy (nats); ``sub_losses``: the per-sub-token means."""

    logits: tuple[Tensor, ...]
    loss: Tensor
    sub_losses: tuple[Tensor, ...]


# --------------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CacheView:
    """What one cached attention call needs: the cache, this layer's index, and the slots (B, n) that
    the n new entries are written to."""

    cache: KVCache | IntraCache
    layer: int
    slots: Tensor
    span: int | None = None  # attend over the first ``span`` slots only (all when None)


class SelfAttention(nn.Module):
    """Llama attention (no biases) with RoPE; ``mask`` (B, 1, n, keys) bool, True = may attend; no
    mask and no cache = causal."""

    def __init__(self, *, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.wqkv = nn.Linear(dim, 3 * dim, bias=False)
        self.wo = nn.Linear(dim, dim, bias=False)

    def forward(self, x: Tensor, *, rope: RopeTable, mask: Tensor | None, cache: CacheView | None) -> Tensor:
        q, k, v = rearrange(self.wqkv(x), "b n (three h d) -> three b h n d", three=3, h=self.heads)
        q, k = apply_rope(q, rope), apply_rope(k, rope)  # (B, H, n, head_dim)
        if cache is not None:
            k, v = cache.cache.write(cache.layer, k, v, cache.slots, span=cache.span)  # (B, H, span, head_dim)
            k, v = k.to(q.dtype), v.to(q.dtype)  # no-op unless the cache stores another dtype than q's
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None and cache is None)
        return self.wo(rearrange(out, "b h n d -> b n (h d)"))  # (B, n, D)


class Block(nn.Module):
    def __init__(self, *, dim: int, heads: int, hidden: int, eps: float) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(dim=dim, eps=eps)
        self.attention = SelfAttention(dim=dim, heads=heads)
        self.ffn_norm = RMSNorm(dim=dim, eps=eps)
        self.feed_forward = SwiGLU(dim=dim, hidden=hidden)

    def forward(self, x: Tensor, *, rope: RopeTable, mask: Tensor | None = None,
                cache: CacheView | None = None) -> Tensor:
        x = x + self.attention(self.attention_norm(x), rope=rope, mask=mask, cache=cache)
        return x + self.feed_forward(self.ffn_norm(x))


def sinusoidal_features(x: Tensor, *, dim: int, max_period: float = 10000.0) -> Tensor:
    """``x`` (B,) -> (B, dim) [cos | sin] features (DiT's timestep embedding)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=x.device, dtype=torch.float32) / half)
    angles = x.float()[:, None] * freqs[None]  # (B, half)
    return torch.cat([angles.cos(), angles.sin()], dim=-1)


class MergeRatioEmbedding(nn.Module):
    """M(K/L): sinusoidal features of 1000·K/L -> Linear -> SiLU -> Linear."""

    def __init__(self, *, dim: int, features: int) -> None:
        super().__init__()
        self.features = features
        self.mlp = nn.Sequential(nn.Linear(features, dim, bias=False), nn.SiLU(), nn.Linear(dim, dim, bias=False))

    def forward(self, ratio: Tensor) -> Tensor:
        features = sinusoidal_features(ratio * 1000.0, dim=self.features)  # (B, features), fp32
        return self.mlp(features.to(self.mlp[0].weight.dtype))  # (B, D); bf16 weights take bf16 features


def _packing_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


@contextmanager
def packed_linears(model: nn.Module, *, rows: int) -> Iterator[bool]:
    """CPU, fp32, no autocast: run every ``nn.Linear`` of ``model`` on oneDNN weights pre-packed for
    ``rows`` input rows, for the duration of the block; yields whether packing is on.

    Why: a decode step multiplies a few rows by every weight matrix. At 2 to 16 rows the default CPU
    kernel reads 768 x 2304 fp32 weights at 3-4 GB/s, the pre-packed oneDNN kernel at 5-6 GB/s (48
    distinct weights, one thread, the 2-core build machine: 1.7x at 2 and at 16 rows); the results are
    the same up to float rounding. The packed copies
    live only inside the block (they double the weight memory), the parameters are untouched, and
    anywhere else (CUDA, bf16, autocast, a torch without oneDNN) this is a no-op."""
    param = next(model.parameters())
    usable = (param.device.type == "cpu" and param.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
              and _packing_available())
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)] if usable else []
    for linear in linears:
        packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), rows)
        bias = None if linear.bias is None else linear.bias.detach()
        # an instance attribute shadows the class's forward for this module only, until deleted below
        linear.forward = _packed_forward(packed, bias)
    try:
        yield bool(linears)
    finally:
        for linear in linears:
            del linear.forward


def _packed_forward(packed: Tensor, bias: Tensor | None):
    def forward(x: Tensor) -> Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")

    return forward


# --------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------


class MergeAR(nn.Module):
    """Build with ``MergeAR(config=build_config(preset="L"))``."""

    def __init__(self, *, config: MergeARConfig) -> None:
        super().__init__()
        _validate(config, source="MergeARConfig")
        self.config = config
        dim, hidden = config.dim, swiglu_hidden(config.dim, ratio=config.mlp_ratio,
                                                 multiple_of=config.mlp_multiple_of)
        head_dim = dim // config.heads
        self.class_embedding = nn.Embedding(config.num_classes + 1, dim)  # last row: null class
        self.merge_embedding = (MergeRatioEmbedding(dim=dim, features=config.merge_features)
                                if config.merge_token else None)
        self.token_embeddings = nn.ModuleList(nn.Embedding(2**b, dim) for b in config.sub_token_bits)
        self.token_drop = nn.Dropout(config.token_dropout)
        self.blocks = nn.ModuleList(Block(dim=dim, heads=config.heads, hidden=hidden, eps=config.norm_eps)
                                    for _ in range(config.depth))
        self.norm = RMSNorm(dim=dim, eps=config.norm_eps)
        # intra-token transformer: input [h, e_0(s_0), ..., e_{n-2}(s_{n-2})], output k predicts s_k
        self.intra_embeddings = nn.ModuleList(nn.Embedding(2**b, dim) for b in config.sub_token_bits[:-1])
        self.intra_blocks = nn.ModuleList(Block(dim=dim, heads=config.heads, hidden=hidden, eps=config.norm_eps)
                                          for _ in range(config.intra_depth))
        self.intra_norm = RMSNorm(dim=dim, eps=config.norm_eps)
        self.heads = nn.ModuleList(nn.Linear(dim, 2**b, bias=False) for b in config.sub_token_bits)
        spatial = rope_2d(grid=config.grid, head_dim=head_dim, base=config.rope_base,
                          identity_prefix=config.prefix)
        intra = rope_1d(length=len(config.sub_token_bits), head_dim=head_dim, base=config.rope_base)
        # derived tables, rebuilt from the config: not saved
        self.register_buffer("rope_cos", spatial.cos, persistent=False)  # (P + L, head_dim/2)
        self.register_buffer("rope_sin", spatial.sin, persistent=False)
        self.register_buffer("intra_cos", intra.cos, persistent=False)  # (n_sub, head_dim/2)
        self.register_buffer("intra_sin", intra.sin, persistent=False)
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=self.config.init_std)

    # ---- sizes ------------------------------------------------------------------------------------

    @property
    def num_tokens(self) -> int:
        return self.config.num_tokens

    @property
    def null_class(self) -> int:
        return self.config.num_classes

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _rope(self, index) -> RopeTable:
        return RopeTable(cos=self.rope_cos[index], sin=self.rope_sin[index])

    # ---- embeddings -------------------------------------------------------------------------------

    def embed_tokens(self, indices: Tensor) -> Tensor:
        """``(...)`` full indices -> ``(..., D)``: the sum of the sub-token embeddings."""
        sub = indices_to_subtokens(indices, self.config.sub_token_bits)  # (..., n_sub)
        return sum(table(sub[..., s]) for s, table in enumerate(self.token_embeddings))

    def embed_prefix(self, labels: Tensor, num_keep: Tensor) -> Tensor:
        """``labels`` (B,) (``null_class`` allowed), ``num_keep`` (B,) -> prefix (B, P, D)."""
        entries = [self.class_embedding(labels)]
        if self.merge_embedding is not None:
            entries.append(self.merge_embedding(num_keep.float() / self.num_tokens))
        return torch.stack(entries, dim=1)

    # ---- intra-token head -------------------------------------------------------------------------

    def _intra(self, hidden: Tensor, given: Tensor) -> Tensor:
        """``hidden`` (N, D), ``given`` (N, s) sub-tokens s_0..s_{s-1} -> intra outputs (N, s + 1, D)."""
        x = torch.stack([hidden] + [self.intra_embeddings[k](given[:, k]) for k in range(given.shape[1])], 1)
        n = x.shape[1]
        rope = RopeTable(cos=self.intra_cos[:n], sin=self.intra_sin[:n])
        for block in self.intra_blocks:
            x = block(x, rope=rope)
        return self.intra_norm(x)

    def sub_token_logits(self, hidden: Tensor, targets: Tensor) -> tuple[Tensor, ...]:
        """Teacher-forced: ``hidden`` (N, D) and target full indices (N,) -> per sub-token (N, 2**bits_s)."""
        sub = indices_to_subtokens(targets, self.config.sub_token_bits)  # (N, n_sub)
        out = self._intra(hidden, sub[:, :-1])  # (N, n_sub, D)
        return tuple(head(out[:, s]) for s, head in enumerate(self.heads))

    def next_sub_token_logits(self, hidden: Tensor, given: Tensor, *, cache: IntraCache | None = None) -> Tensor:
        """Sampling: logits (N, 2**bits_s) of sub-token ``s = given.shape[1]`` given s_0..s_{s-1}. With
        ``cache`` (filled by the calls for sub-tokens 0..s-1 of this step, in order) only position s runs."""
        s = given.shape[1]
        if cache is None:
            return self.heads[s](self._intra(hidden, given)[:, s])
        x = (hidden if s == 0 else self.intra_embeddings[s - 1](given[:, s - 1]))[:, None]  # (N, 1, D)
        rope = RopeTable(cos=self.intra_cos[s:s + 1], sin=self.intra_sin[s:s + 1])
        slots = torch.full((x.shape[0], 1), s, dtype=torch.long, device=x.device)
        for layer, block in enumerate(self.intra_blocks):
            x = block(x, rope=rope, cache=CacheView(cache=cache, layer=layer, slots=slots, span=s + 1))
        return self.heads[s](self.intra_norm(x)[:, 0])

    def new_intra_cache(self, *, rows: int, dtype: torch.dtype | None = None) -> IntraCache:
        cfg = self.config
        param = self.class_embedding.weight
        return IntraCache(depth=cfg.intra_depth, rows=rows, heads=cfg.heads, head_dim=cfg.dim // cfg.heads,
                          length=len(cfg.sub_token_bits), dtype=dtype or self._cache_dtype(), device=param.device)

    def _cache_dtype(self) -> torch.dtype:
        """What K/V are computed in: the autocast dtype when autocast is on (bf16 halves the cache),
        else the weights' dtype."""
        param = self.class_embedding.weight
        if torch.is_autocast_enabled(param.device.type):
            return torch.get_autocast_dtype(param.device.type)
        return param.dtype

    # ---- teacher-forced pass ----------------------------------------------------------------------

    def hidden_states(self, indices: Tensor, labels: Tensor, num_keep: Tensor) -> Tensor:
        """``indices`` (B, L) -> (B, L, D); entry i predicts ``indices[:, i]``. Class and token dropout
        apply in training mode only."""
        cfg = self.config
        if indices.ndim != 2 or indices.shape[1] != self.num_tokens:
            raise ValueError(f"indices must be (B, L={self.num_tokens}), got {tuple(indices.shape)}")
        if self.training and cfg.class_dropout > 0:
            drop = torch.rand(labels.shape, device=labels.device) < cfg.class_dropout
            labels = torch.where(drop, torch.full_like(labels, self.null_class), labels)
        tokens = self.token_drop(self.embed_tokens(indices[:, :-1]))  # (B, L-1, D)
        x = torch.cat([self.embed_prefix(labels, num_keep).to(tokens.dtype), tokens], dim=1)  # (B, S, D)
        mask = cfg.mask_policy.training_mask(indices)  # (B, 1, S, S) or None = causal
        rope = self._rope(slice(0, x.shape[1]))
        for block in self.blocks:
            x = block(x, rope=rope, mask=mask)
        return self.norm(x[:, cfg.prefix - 1:])  # (B, L, D)

    def forward(self, indices: Tensor, labels: Tensor, num_keep: Tensor) -> AROutput:
        hidden = self.hidden_states(indices, labels, num_keep)  # (B, L, D)
        logits = self.sub_token_logits(hidden.flatten(0, 1), indices.flatten())
        logits = tuple(lg.unflatten(0, indices.shape) for lg in logits)  # each (B, L, 2**bits_s)
        targets = indices_to_subtokens(indices, self.config.sub_token_bits)  # (B, L, n_sub)
        sub_losses = tuple(F.cross_entropy(lg.flatten(0, 1).float(), targets[..., s].flatten())
                           for s, lg in enumerate(logits))
        return AROutput(logits=logits, loss=torch.stack(sub_losses).sum(), sub_losses=sub_losses)

    # ---- cached pass (sampling) -------------------------------------------------------------------

    def _cached_blocks(self, x: Tensor, *, rope: RopeTable, mask: Tensor, cache: KVCache, slots: Tensor,
                       span: int | None = None) -> Tensor:
        for layer, block in enumerate(self.blocks):
            x = block(x, rope=rope, mask=mask, cache=CacheView(cache=cache, layer=layer, slots=slots, span=span))
        return self.norm(x)

    def prefill(self, labels: Tensor, num_keep: Tensor, cache: KVCache) -> Tensor:
        """Write the prefix into ``cache`` (slots 0..P-1); returns the hidden state that predicts t_1 (B, D)."""
        x = self.embed_prefix(labels, num_keep)  # (B, P, D), the weights' dtype (the cache may store bf16)
        slots = cache.admit_prefix()  # (B, P)
        mask = cache.prefix_mask()  # (B, 1, P, capacity): causal within the prefix
        return self._cached_blocks(x, rope=self._rope(slice(0, self.config.prefix)), mask=mask, cache=cache,
                                   slots=slots)[:, -1].contiguous()  # the decode step's input layout

    def decode_step(self, tokens: Tensor, *, cache: KVCache, span: int | None = None) -> Tensor:
        """Feed ``tokens`` (B,) at the cache's next position (``cache.step``); returns the hidden state
        that predicts the next token (B, D). Static shapes, no host synchronisation: compiles whole with
        ``torch.compile(fullgraph=True)``. ``span`` (``cache.span()``, a host int): attend over the first
        ``span`` slots only; None = the whole capacity. The caller advances ``cache.fed``."""
        index = (self.config.prefix - 1 + cache.step).view(1)  # sequence index of this entry (0-d -> (1,))
        rope = RopeTable(cos=self.rope_cos.index_select(0, index), sin=self.rope_sin.index_select(0, index))
        slots = cache.admit(tokens)  # (B,) evicts, checks duplication, picks a slot
        x = self.embed_tokens(tokens)[:, None]  # (B, 1, D), the weights' dtype
        return self._cached_blocks(x, rope=rope, mask=cache.visible_mask(span), cache=cache,
                                   slots=slots[:, None], span=span)[:, 0]

    def new_cache(self, *, batch: int, compressed: bool, max_unique: int, dtype: torch.dtype | None = None,
                  bounded: bool = False) -> KVCache:
        """A static cache for ``batch`` rows; ``max_unique`` sizes the compressed cache (it grows, between
        steps, if a row produces more unique tokens, unless ``bounded``: the sampler guarantees it cannot)."""
        cfg = self.config
        param = self.class_embedding.weight
        return KVCache(depth=cfg.depth, batch=batch, heads=cfg.heads, head_dim=cfg.dim // cfg.heads,
                       policy=cfg.mask_policy, length=self.num_tokens, compressed=compressed,
                       max_unique=max_unique, dtype=dtype or self._cache_dtype(), device=param.device, bounded=bounded)

    # ---- save / load ------------------------------------------------------------------------------

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (atomically) into ``directory``."""
        from safetensors.torch import save

        directory = Path(directory)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        with atomic_write(directory / WEIGHTS_FILE) as handle:
            handle.write(save(state, metadata={"format": "mergevq-ar", "version": str(FORMAT_VERSION)}))
        with atomic_write(directory / CONFIG_FILE, text=True) as handle:
            json.dump({"format_version": FORMAT_VERSION, "kind": "mergear", "model": self.config.to_dict()},
                      handle, indent=2)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, *, map_location: str | torch.device = "cpu") -> MergeAR:
        """Build from ``config.json`` and load ``model.safetensors`` strictly; returns the model in eval mode."""

        directory = Path(directory)
        config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
        for path in (config_path, weights_path):
            if not path.is_file():
                raise WeightsError(f"{path} not found: expected a folder written by MergeAR.save_pretrained")
        try:
            meta = json.loads(config_path.read_text())
            if meta.get("kind") != "mergear":
                raise KeyError("kind")
            model_cfg = meta["model"]
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
            raise WeightsError(f"{config_path} is not a MergeAR config ({err})") from None
        model = cls(config=config_from_dict(model_cfg, source=str(config_path)))
        load_weights_strict(model, weights_path, config_path=config_path, map_location=map_location)
        return model.to(map_location).eval()
