"""Encoder initialisation from a DINOv2 checkpoint by uniform element selection (DESIGN §4 step 8).

**Uniform element selection.** To shrink a tensor to a smaller shape, every dimension independently
keeps ``m`` of its ``n`` indices, evenly spaced from the first to the last:
``index_i = round_half_up(i · (n − 1) / (m − 1))`` for ``i = 0 .. m−1`` (``m = 1`` keeps index 0;
``m = n`` is the identity). The rounding is done in exact integer arithmetic, so the rule does not
depend on floating-point ties. Example: 10 → 4 keeps ``[0, 3, 6, 9]``. A target larger than the
source is an error (nothing to select).

**Consistency across tensors.** Every dimension of the same size is reduced with the same indices, so
the residual-stream channels kept in ``norm1.weight`` are exactly the input columns kept in
``qkv.weight`` and ``fc1.weight``, the output rows of ``proj`` / ``fc2``, ``ls1.gamma``,
``cls_token`` and ``norm.weight``; the MLP hidden channels kept in ``fc1``'s rows are ``fc2``'s columns.
``attn.qkv`` is split into its q, k, v chunks, which are reduced separately with the same indices (q,
k and v stay aligned channel by channel, and v's kept channels are ``proj``'s kept columns). Heads
are not treated specially: the kept channels of q/k/v are regrouped into the encoder's heads in
order, so when the head count or head size changes (e.g. 12×64 → 8×48) a target head mixes channels
of neighbouring source heads. This is an initialisation, not an equivalent network.

**Blocks.** When the checkpoint has more blocks than the encoder, the blocks themselves are selected
by the same rule (12 → 6 keeps blocks 0, 2, 4, 7, 9, 11); an encoder deeper than the checkpoint is a
config error.

**Sources.** ``source="timm"``: timm ``vit_*_dinov2`` state dicts, and Meta's original DINOv2 files
(same block names); ``source="transformers"``: ``Dinov2Model`` state dicts, either as saved on disk
(``encoder.layer.{i}.attention.attention.{query,key,value}``, ``attention.output.dense``) or as
transformers ≥ 5 names them in memory (``attention.{q,k,v,o}_proj``); a ``dinov2.`` prefix (from
``Dinov2ForImageClassification``) is stripped. q, k, v are concatenated into ``qkv``. Tensors that do
not map to the encoder (patch embedding, position embedding, mask/register tokens, heads) are
reported as skipped. The [CLS] token is copied as stored: DINOv2's ``pos_embed[:, 0]`` is not folded
into it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from mergevq.errors import ConfigError, WeightsError
from mergevq.fileio import torch_load

INIT_SOURCES = ("timm", "transformers")

# Parameter names of one encoder block (timm's ``Block``), relative to ``blocks.{i}.``.
BLOCK_KEYS = (
    "norm1.weight", "norm1.bias",
    "attn.qkv.weight", "attn.qkv.bias",
    "attn.proj.weight", "attn.proj.bias",
    "ls1.gamma",
    "norm2.weight", "norm2.bias",
    "mlp.fc1.weight", "mlp.fc1.bias",
    "mlp.fc2.weight", "mlp.fc2.bias",
    "ls2.gamma",
)
TOP_KEYS = ("cls_token", "norm.weight", "norm.bias")

# transformers Dinov2Layer suffix -> timm Block suffix (q/k/v handled as chunks of attn.qkv).
_HF_BLOCK = {
    "norm1.weight": "norm1.weight", "norm1.bias": "norm1.bias",
    "attention.output.dense.weight": "attn.proj.weight", "attention.output.dense.bias": "attn.proj.bias",
    "attention.o_proj.weight": "attn.proj.weight", "attention.o_proj.bias": "attn.proj.bias",
    "layer_scale1.lambda1": "ls1.gamma",
    "norm2.weight": "norm2.weight", "norm2.bias": "norm2.bias",
    "mlp.fc1.weight": "mlp.fc1.weight", "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.weight": "mlp.fc2.weight", "mlp.fc2.bias": "mlp.fc2.bias",
    "layer_scale2.lambda1": "ls2.gamma",
}
_HF_QKV = {
    "attention.attention.query": "q", "attention.attention.key": "k", "attention.attention.value": "v",
    "attention.q_proj": "q", "attention.k_proj": "k", "attention.v_proj": "v",
}
_HF_TOP = {"embeddings.cls_token": "cls_token", "layernorm.weight": "norm.weight", "layernorm.bias": "norm.bias"}
_HF_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")
_TIMM_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")


# --------------------------------------------------------------------------------------------------
# uniform element selection


def selection_indices(n_src: int, n_dst: int) -> Tensor:
    """The ``n_dst`` evenly spaced indices into ``range(n_src)`` (see the module docstring)."""
    if n_dst > n_src:
        raise ConfigError(f"cannot select {n_dst} elements from {n_src}: the target is larger than the source")
    if n_dst < 1:
        raise ConfigError(f"cannot select {n_dst} elements: the target size must be at least 1")
    if n_dst == 1:
        return torch.zeros(1, dtype=torch.long)
    i = torch.arange(n_dst, dtype=torch.long)
    # round_half_up(i (n-1) / (m-1)) = floor((2 i (n-1) + (m-1)) / (2 (m-1))), exact in integers
    return torch.div(2 * i * (n_src - 1) + (n_dst - 1), 2 * (n_dst - 1), rounding_mode="floor")


def uniform_select(src: Tensor, shape: Sequence[int]) -> Tensor:
    """``src`` reduced to ``shape`` by taking evenly spaced indices along every dimension.

    Same shape → an identical copy. ``len(shape)`` must equal ``src.ndim`` and no target size may
    exceed the source size (:class:`ConfigError`). Returns a new tensor (never a view of ``src``).
    """
    target = tuple(int(s) for s in shape)
    if len(target) != src.ndim:
        raise ConfigError(f"cannot select shape {target} from a tensor of shape {tuple(src.shape)}: ranks differ")
    if any(m > n for m, n in zip(target, src.shape)):
        raise ConfigError(
            f"cannot select shape {target} from a tensor of shape {tuple(src.shape)}: the target is larger"
        )
    out = src
    for dim, (n, m) in enumerate(zip(src.shape, target)):
        if m != n:
            out = out.index_select(dim, selection_indices(n, m).to(src.device))
    return out.clone() if out is src else out


# --------------------------------------------------------------------------------------------------
# state-dict files


def _resolve_weights_file(path: Path) -> Path:
    if path.is_dir():  # a transformers folder: the same folder as model.teacher.path
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (path / name).is_file():
                return path / name
        raise WeightsError(
            f"weights file not found: {path}/model.safetensors (nor pytorch_model.bin); download the "
            f"checkpoint once and point the config at it (nothing is downloaded at run time)"
        )
    if not path.is_file():
        raise WeightsError(
            f"weights file not found: {path}; download the checkpoint once and point the config at it "
            f"(nothing is downloaded at run time)"
        )
    return path


def load_state_dict_file(path: str | os.PathLike) -> dict[str, Tensor]:
    """A state dict from a local file, on the CPU.

    ``.safetensors`` is read with safetensors; ``.pt`` / ``.pth`` / ``.bin`` / ``.ckpt`` with
    ``torch.load(weights_only=True)`` (no arbitrary pickles), unwrapping a top-level ``"model"`` or
    ``"state_dict"`` entry. A folder means its ``model.safetensors`` or ``pytorch_model.bin`` (a
    transformers checkpoint folder). Missing, unreadable or non-tensor content → :class:`WeightsError`.
    """
    file = _resolve_weights_file(Path(path).expanduser())
    suffix = file.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(file), device="cpu")
        except Exception as exc:  # noqa: BLE001 - corrupt / truncated / foreign file
            text = str(exc).strip().splitlines()
            raise WeightsError(
                f"{file} is not a readable state dict ({text[0] if text else type(exc).__name__}); "
                f"download it again"
            ) from None
    elif suffix in (".pt", ".pth", ".bin", ".ckpt"):
        state = torch_load(file, what="state dict", error=WeightsError, hint="download it again")
    else:
        raise WeightsError(
            f"{file}: unknown weights format {suffix or '(no suffix)'}; expected .safetensors, .pt, .pth or .bin"
        )
    for wrapper in ("model", "state_dict"):
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
            break
    if not isinstance(state, Mapping):
        raise WeightsError(f"{file} does not hold a state dict (found {type(state).__name__})")
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise WeightsError(f"{file} is not a plain state dict: entry {bad[0]!r} is not a named tensor")
    return dict(state)


# --------------------------------------------------------------------------------------------------
# checkpoint -> timm block names


@dataclass
class _Converted:
    """A DINOv2 checkpoint in the encoder's names, with the original keys behind every tensor."""

    blocks: dict[int, dict[str, Tensor]] = field(default_factory=dict)
    top: dict[str, Tensor] = field(default_factory=dict)
    origin: dict[tuple[int, str], tuple[str, ...]] = field(default_factory=dict)  # (block|-1, name) -> keys
    unmapped: list[str] = field(default_factory=list)


def _convert_timm(state: Mapping[str, Tensor]) -> _Converted:
    out = _Converted()
    for key, value in state.items():
        match = _TIMM_BLOCK.match(key)
        if match and match.group(2) in BLOCK_KEYS:
            index, name = int(match.group(1)), match.group(2)
            out.blocks.setdefault(index, {})[name] = value
            out.origin[(index, name)] = (key,)
        elif key in TOP_KEYS:
            out.top[key] = value
            out.origin[(-1, key)] = (key,)
        else:
            out.unmapped.append(key)
    return out


def _convert_transformers(state: Mapping[str, Tensor]) -> _Converted:
    out = _Converted()
    qkv: dict[tuple[int, str], dict[str, tuple[str, Tensor]]] = {}  # (block, weight|bias) -> q/k/v
    for key, value in state.items():
        name = key.removeprefix("dinov2.")
        if name in _HF_TOP:
            out.top[_HF_TOP[name]] = value
            out.origin[(-1, _HF_TOP[name])] = (key,)
            continue
        match = _HF_LAYER.match(name)
        if not match:
            out.unmapped.append(key)
            continue
        index, suffix = int(match.group(1)), match.group(2)
        if suffix in _HF_BLOCK:
            target = _HF_BLOCK[suffix]
            out.blocks.setdefault(index, {})[target] = value
            out.origin[(index, target)] = (key,)
            continue
        stem, _, leaf = suffix.rpartition(".")
        if stem in _HF_QKV and leaf in ("weight", "bias"):
            qkv.setdefault((index, leaf), {})[_HF_QKV[stem]] = (key, value)
        else:
            out.unmapped.append(key)
    for (index, leaf), parts in sorted(qkv.items()):
        if set(parts) != {"q", "k", "v"}:
            lacking = sorted({"q", "k", "v"} - set(parts))
            raise WeightsError(
                f"DINOv2 checkpoint layer {index}: attention {leaf} has no {'/'.join(lacking)} projection"
            )
        target = f"attn.qkv.{leaf}"
        out.blocks.setdefault(index, {})[target] = torch.cat([parts[c][1] for c in "qkv"], dim=0)
        out.origin[(index, target)] = tuple(parts[c][0] for c in "qkv")
    return out


# --------------------------------------------------------------------------------------------------
# initialisation


@dataclass(frozen=True)
class InitReport:
    """What :func:`init_encoder_from_dinov2` did.

    ``block_map[i]`` is the checkpoint block that initialised encoder block ``i``; ``loaded`` the
    encoder keys written; ``not_initialised`` the encoder keys left as they were; ``skipped`` the
    checkpoint keys not used (unmapped tensors and unselected blocks); ``shape_changes`` maps an
    encoder key to (checkpoint shape, encoder shape) where uniform selection changed the shape.
    """

    source: str
    block_map: tuple[int, ...]
    loaded: tuple[str, ...]
    not_initialised: tuple[str, ...]
    skipped: tuple[str, ...]
    shape_changes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]]


def _select_for(key: str, src: Tensor, dst_shape: tuple[int, ...]) -> Tensor:
    try:
        if key.endswith(("attn.qkv.weight", "attn.qkv.bias")):
            if src.shape[0] % 3 or dst_shape[0] % 3 or src.ndim != len(dst_shape):
                raise ConfigError(f"qkv shapes {tuple(src.shape)} -> {dst_shape} are not three stacked chunks")
            # (3·D, ...) -> (3, D, ...): reduce q, k, v separately with the same indices
            chunks = src.reshape(3, src.shape[0] // 3, *src.shape[1:])
            picked = uniform_select(chunks, (3, dst_shape[0] // 3, *dst_shape[1:]))
            return picked.reshape(dst_shape)
        return uniform_select(src, dst_shape)
    except ConfigError as exc:
        raise ConfigError(f"DINOv2 init of {key}: {exc}") from None


def init_encoder_from_dinov2(
    encoder: nn.Module,
    state_dict: Mapping[str, Tensor],
    *,
    source: str,
    include_cls_token: bool = True,
    include_norm: bool = True,
) -> InitReport:
    """Initialise ``encoder``'s transformer blocks (and optionally ``cls_token`` and the final
    ``norm``) from a DINOv2 state dict by uniform element selection (module docstring).

    ``encoder`` names its parameters like timm's ``VisionTransformer``: ``blocks.{i}.<BLOCK_KEYS>``,
    ``cls_token`` (1, 1, D), ``norm.{weight,bias}``. Encoder keys the checkpoint has nothing for are
    left alone and listed in ``not_initialised``; a block tensor the encoder has but the checkpoint
    lacks (e.g. a SwiGLU DINOv2-g checkpoint has no ``mlp.fc1``) is a :class:`WeightsError`.
    Load the file with :func:`load_state_dict_file`.
    """
    if source == "timm":
        converted = _convert_timm(state_dict)
    elif source == "transformers":
        converted = _convert_transformers(state_dict)
    else:
        raise ConfigError(f"unknown DINOv2 init source {source!r}; choose one of {', '.join(INIT_SOURCES)}")

    n_src = len(converted.blocks)
    if n_src == 0 or sorted(converted.blocks) != list(range(n_src)):
        raise WeightsError(
            f"the state dict has no DINOv2 blocks numbered 0..n-1 in {source} names "
            f"(found {sorted(converted.blocks)[:4]}); is source: {source} right?"
        )
    target = encoder.state_dict()
    enc_blocks = sorted({int(m.group(1)) for k in target if (m := _TIMM_BLOCK.match(k))})
    n_enc = len(enc_blocks)
    if enc_blocks != list(range(n_enc)):
        raise ConfigError(f"encoder blocks are not numbered 0..n-1: {enc_blocks[:6]}")
    if n_enc > n_src:
        raise ConfigError(f"the encoder has {n_enc} blocks but the DINOv2 checkpoint only {n_src}")
    block_map = tuple(int(j) for j in selection_indices(n_src, n_enc)) if n_enc else ()

    new: dict[str, Tensor] = {}
    used: set[str] = set()
    shape_changes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    not_initialised: list[str] = []
    for key, dst in target.items():
        match = _TIMM_BLOCK.match(key)
        if match and match.group(2) in BLOCK_KEYS:
            j, name = block_map[int(match.group(1))], match.group(2)
            src = converted.blocks[j].get(name)
            if src is None:
                raise WeightsError(f"the DINOv2 checkpoint has no {name} for block {j} (needed for encoder {key})")
            origin = converted.origin[(j, name)]
        elif (key == "cls_token" and include_cls_token) or (key in ("norm.weight", "norm.bias") and include_norm):
            src = converted.top.get(key)
            if src is None:
                not_initialised.append(key)
                continue
            origin = converted.origin[(-1, key)]
        else:
            not_initialised.append(key)
            continue
        dst_shape = tuple(dst.shape)
        new[key] = _select_for(key, src, dst_shape).to(dtype=dst.dtype)
        used.update(origin)
        if tuple(src.shape) != dst_shape:
            shape_changes[key] = (tuple(src.shape), dst_shape)

    result = encoder.load_state_dict(new, strict=False)
    if result.unexpected_keys:  # pragma: no cover - every key came from the encoder itself
        raise RuntimeError(f"unexpected keys in DINOv2 init: {result.unexpected_keys[:4]}")
    return InitReport(
        source=source,
        block_map=block_map,
        loaded=tuple(new),
        not_initialised=tuple(not_initialised),
        skipped=tuple(k for k in state_dict if k not in used),
        shape_changes=shape_changes,
    )


__all__ = [
    "BLOCK_KEYS",
    "INIT_SOURCES",
    "InitReport",
    "init_encoder_from_dinov2",
    "load_state_dict_file",
    "selection_indices",
    "uniform_select",
]
