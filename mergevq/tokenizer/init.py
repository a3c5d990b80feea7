"""Encoder initialisation from a DINOv2 checkpoint by element selection (DESIGN §4 step 8).

The G and GR recipes start the encoder's ViT from DINOv2 (ViT-S/14 for the d32 widths, ViT-B/14
otherwise), shrinking every tensor to the encoder's shape by picking a subset of its entries. This
module reproduces what the authors' training code does, tensor for tensor.

**What is initialised.** Only the encoder's ``cls_token`` and its transformer blocks
(``blocks.{i}.<timm Block keys>``). Block ``i`` of the encoder comes from block ``i`` of the
checkpoint, the same index (an encoder with fewer blocks takes the first ones; one with more is a
:class:`ConfigError`). Everything else of the encoder (the CNN or patch stem, the pre-quantisation
head) keeps its fresh initialisation, and every other checkpoint tensor (patch and position
embeddings, mask and register tokens, the final LayerNorm, heads) is unused and listed in the
report.

**Selecting elements.** Each dimension of a tensor is shrunk on its own, from ``n`` source entries
to ``m`` target entries (``m <= n``, else :class:`ConfigError`):

* when ``m`` divides ``n``: every ``(n // m)``-th entry, starting with the first
  (``0, s, 2s, ...`` with ``s = n // m``; ``m = n`` is the identity);
* otherwise: ``torch.round(torch.linspace(0, n - 1, m))`` in float32, i.e. evenly spaced from the
  first entry to the last, ties rounded to the even index.

For example 768 -> 384 keeps ``0, 2, 4, ...``; 768 -> 512 keeps ``0, 2, 3, 5, 6, ...``; 10 -> 4 keeps
``0, 3, 6, 9``. Because the rule depends only on the two sizes, dimensions of equal size are
reduced alike: the residual channels kept by the LayerNorms, ``ls*.gamma``, ``cls_token``, the
input columns of ``qkv`` / ``fc1`` and the output rows of ``proj`` / ``fc2`` are the same ones.
``attn.qkv`` is one tensor of ``3·D`` rows (q, then k, then v) and is reduced as one, like every
other tensor. With a stride (e.g. 2304 -> 1152 rows) and for the paper's widths (DINOv2-B 2304 ->
1536 rows for the 512-wide d64 encoders) each third of the kept rows is exactly the residual
channels kept elsewhere, in q, k and v alike; for some other widths (e.g. 64 -> 48) a few rows of a
third land one channel off (each third still draws only from its own q, k or v). Heads are not
treated specially either. The result is a starting point for training, not a network equivalent
to the checkpoint.

**Sources.** ``source="timm"``: timm ``vit_*_dinov2`` state dicts (the authors load
``vit_base_patch14_dinov2.lvd142m`` / ``vit_small_patch14_dinov2.lvd142m``) and Meta's original
DINOv2 files, which share the block names. ``source="transformers"``: ``Dinov2Model`` state dicts,
as saved on disk (``encoder.layer.{i}.attention.attention.{query,key,value}``,
``attention.output.dense``) or as transformers >= 5 names them in memory
(``attention.{q,k,v,o}_proj``), also under a ``dinov2.`` prefix; q, k and v are stacked into the
timm ``qkv`` layout first, so both sources give the same tensors for the same DINOv2 weights. The
[CLS] token is taken as stored (DINOv2's ``pos_embed[:, 0]`` is not added to it).

**From a config.** :class:`EncoderInit` is the ``model.params.encoder_init`` mapping of the
training config (``{source, path}``); :func:`init_encoder_from_file` reads the local file or folder
(nothing is downloaded) and applies it once when a run is built.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
# Non-block tensors the conversion reads (the teacher uses the final norm; the init only cls_token).
TOP_KEYS = ("cls_token", "norm.weight", "norm.bias")

# transformers Dinov2Layer suffix -> timm Block suffix (q/k/v are stacked into attn.qkv).
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
# element selection


def selection_indices(n_src: int, n_dst: int) -> Tensor:
    """The ``n_dst`` indices into ``range(n_src)`` that element selection keeps (module docstring):
    a stride of ``n_src // n_dst`` from 0 when ``n_dst`` divides ``n_src``, else
    ``round(linspace(0, n_src - 1, n_dst))`` (float32, ties to even). int64 tensor."""
    if n_dst > n_src:
        raise ConfigError(f"cannot select {n_dst} elements from {n_src}: the target is larger than the source")
    if n_dst < 1:
        raise ConfigError(f"cannot select {n_dst} elements: the target size must be at least 1")
    if n_src % n_dst == 0:
        return torch.arange(n_dst, dtype=torch.long) * (n_src // n_dst)
    return torch.round(torch.linspace(0, n_src - 1, n_dst, dtype=torch.float32)).long()


def uniform_select(src: Tensor, shape: Sequence[int]) -> Tensor:
    """``src`` reduced to ``shape`` by :func:`selection_indices` along every dimension.

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

    ``block_map[i]`` is the checkpoint block that initialised encoder block ``i`` (always ``i``);
    ``loaded`` the encoder keys written; ``not_initialised`` the encoder keys left as they were (the
    stem, the pre-quantisation head, anything outside ``cls_token`` and the blocks); ``skipped`` the
    checkpoint keys not used; ``shape_changes`` maps an encoder key to (checkpoint shape, encoder
    shape) where element selection changed the shape.
    """

    source: str
    block_map: tuple[int, ...]
    loaded: tuple[str, ...]
    not_initialised: tuple[str, ...]
    skipped: tuple[str, ...]
    shape_changes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]]

    def summary(self) -> str:
        """One line for the log: what was selected and what was left out."""
        blocks = len(self.block_map)
        groups = sorted({k.split(".", 1)[0] for k in self.not_initialised})
        example = next(iter(self.shape_changes.items()), None)
        shrunk = (
            f"{len(self.shape_changes)} shrunk by element selection (e.g. {example[0]} "
            f"{tuple(example[1][0])} -> {tuple(example[1][1])})" if example else "none shrunk (same widths)"
        )
        unused = ", ".join(self.skipped[:3]) + (", ..." if len(self.skipped) > 3 else "")
        return (
            f"DINOv2 encoder init ({self.source}): cls_token and blocks 0..{blocks - 1} from checkpoint "
            f"blocks 0..{blocks - 1}: {len(self.loaded)} tensors loaded, {shrunk}; left as built: "
            f"{len(self.not_initialised)} tensors ({', '.join(groups) or 'none'}); checkpoint tensors "
            f"unused: {len(self.skipped)} ({unused or 'none'})"
        )


def init_encoder_from_dinov2(encoder: nn.Module, state_dict: Mapping[str, Tensor], *, source: str) -> InitReport:
    """Initialise ``encoder``'s ``cls_token`` and transformer blocks from a DINOv2 state dict by
    element selection (module docstring); every other encoder tensor is left alone.

    ``encoder`` names its ViT parameters like timm's ``VisionTransformer``: ``cls_token`` (1, 1, D)
    and ``blocks.{i}.<BLOCK_KEYS>`` (MergeVQ's ``MergingEncoder`` does). A block tensor the encoder
    has but the checkpoint lacks (e.g. a SwiGLU DINOv2-g checkpoint has no ``mlp.fc1``) is a
    :class:`WeightsError`; a wider or deeper encoder than the checkpoint a :class:`ConfigError`.
    Load the file with :func:`load_state_dict_file`, or use :func:`init_encoder_from_file`.
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
    block_map = tuple(range(n_enc))  # same index, as the authors match keys by name

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
        elif key == "cls_token" and "cls_token" in converted.top:
            src, origin = converted.top["cls_token"], converted.origin[(-1, "cls_token")]
        else:
            not_initialised.append(key)
            continue
        dst_shape = tuple(dst.shape)
        try:
            picked = uniform_select(src, dst_shape)
        except ConfigError as exc:
            raise ConfigError(f"DINOv2 init of {key}: {exc}") from None
        new[key] = picked.to(dtype=dst.dtype)
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


# --------------------------------------------------------------------------------------------------
# from the training config


@dataclass(frozen=True)
class EncoderInit:
    """``model.params.encoder_init`` of a Stage 1 config: where the DINOv2 weights are.

    ``source``: ``"transformers"`` (a local ``Dinov2Model`` folder such as the teacher's
    ``facebook/dinov2-base``, or its weights file) or ``"timm"`` (a timm / Meta DINOv2 weights file).
    ``path``: that folder or file on this machine.
    """

    source: str
    path: str | None

    def __post_init__(self) -> None:
        if self.source not in INIT_SOURCES:
            raise ConfigError(
                f"model.params.encoder_init.source must be one of {', '.join(INIT_SOURCES)}, got {self.source!r}"
            )
        if self.path is None:  # the G/GR files read the teacher's path, which is gone with teacher: null
            raise ConfigError(
                "model.params.encoder_init.path is null (the G and GR configs take it from "
                "model.params.teacher.params.path, and the teacher is null): set "
                "model.params.encoder_init.path=/path/to/dinov2-base, or model.params.encoder_init=null "
                "to train the ViT from scratch"
            )
        if not isinstance(self.path, (str, os.PathLike)) or not str(self.path):
            raise ConfigError(f"model.params.encoder_init.path must be a non-empty path, got {self.path!r}")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | EncoderInit) -> EncoderInit:
        """From the config mapping ``{source, path}``; a missing or unknown key is a ConfigError."""
        if isinstance(data, cls):
            return data
        if not isinstance(data, Mapping):
            raise ConfigError(
                f"model.params.encoder_init must be null or a mapping {{source, path}}, got {type(data).__name__}"
            )
        names = ("source", "path")
        unknown, missing = sorted(set(data) - set(names)), [n for n in names if n not in data]
        if unknown or missing:
            raise ConfigError(
                f"model.params.encoder_init: unknown key(s) {', '.join(unknown) or '-'}, missing "
                f"key(s) {', '.join(missing) or '-'}; it takes exactly source and path"
            )
        path = data["path"]
        return cls(source=data["source"], path=path if path is None else str(path))


def _init_weights_missing(path: Path) -> WeightsError:
    return WeightsError(
        f"DINOv2 weights for the encoder init not found: {path} (download facebook/dinov2-base, or "
        f"facebook/dinov2-small for the d32 variants, once and point model.params.encoder_init.path at "
        f"the folder, or set model.params.encoder_init=null to train the ViT from scratch; nothing is "
        f"downloaded at run time)"
    )


def init_encoder_from_file(encoder: nn.Module, init: EncoderInit) -> InitReport:
    """:func:`init_encoder_from_dinov2` with the weights read from ``init.path`` (a transformers
    folder or a weights file, see :func:`load_state_dict_file`). A path that does not exist, or a
    folder without weights, is a one-line :class:`WeightsError` naming it."""
    path = Path(init.path).expanduser()
    if not path.exists():
        raise _init_weights_missing(path)
    if path.is_dir() and not any((path / n).is_file() for n in ("model.safetensors", "pytorch_model.bin")):
        raise _init_weights_missing(path / "model.safetensors")
    return init_encoder_from_dinov2(encoder, load_state_dict_file(path), source=init.source)


__all__ = [
    "BLOCK_KEYS",
    "INIT_SOURCES",
    "EncoderInit",
    "InitReport",
    "init_encoder_from_dinov2",
    "init_encoder_from_file",
    "load_state_dict_file",
    "selection_indices",
    "uniform_select",
]
