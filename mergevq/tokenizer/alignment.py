"""Global alignment (DESIGN §4 step 7): the student's [CLS] head and the frozen DINOv2 teacher.

An offline stand-in teacher shares the interface: ``source="lpips-vgg16"``, the ImageNet VGG-16 of
the LPIPS weights that ``mergevq prepare-weights`` converts (:mod:`mergevq.tokenizer.vgg_teacher`;
pooled feature = the global average of relu5_3, 512-d).

The student encoder's [CLS] output goes through :class:`ClsHead` to the teacher's width (768 for
DINOv2 ViT-B/14); the frozen :class:`Teacher` sees the weak 224 px view and gives the pooled feature
the student is aligned to. The alignment loss itself (T²·KL with T = 4) lives with the other losses.

**Pooled feature** (one definition for both sources): the [CLS] token of the last block *after the
final LayerNorm*. For transformers' ``Dinov2Model`` that is ``pooler_output``; for timm's
``vit_*_dinov2`` it is ``forward_features(x)[:, 0]`` (timm's DINOv2 models pool with ``'token'``, so
the final norm is inside ``forward_features``). With the same weights and the same input size the two
agree to float precision (tested).

**Loading is explicit.** ``Teacher(model=..., source=...)`` only wraps a module; the weights are read
by :meth:`Teacher.from_transformers` / :meth:`Teacher.from_timm` (or :func:`build_teacher`, the
config entry point) from a *local* path. Nothing is downloaded at run time.

**The teacher is never in a checkpoint.** The wrapped network is held outside ``_modules`` (a
:class:`Teacher` has no parameters or buffers of its own), so a parent module's ``state_dict()``,
``load_state_dict(strict=True)``, ``parameters()`` (optimizers, DDP, EMA, parameter counts),
``apply()`` (weight-init functions) and ``requires_grad_()`` (GAN parameter toggling) never see it.
``_apply`` is forwarded, so ``parent.to(device)``, ``.half()``, ``.double()``, ``.cuda()`` move it.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor, nn

from mergevq.errors import ConfigError, WeightsError
from taming.modules.frozen import FrozenHolder

LPIPS_VGG16 = "lpips-vgg16"
TEACHER_SOURCES = ("transformers", "timm", LPIPS_VGG16)
DEFAULT_TEACHER_DIM = 768  # DINOv2 ViT-B/14


CLS_HEADS = ("mlp3", "mlp_ln")


class ClsHead(nn.Module):
    """MLP from the encoder's raw [CLS] output to the teacher's feature space, in one of the
    authors' two forms (hidden width ``4 * in_dim`` by default, the ViT MLP ratio):

    - ``"mlp3"`` (GR, R): Linear → GELU → Linear → GELU → Linear (``fc1``, ``fc2``, ``fc3``);
    - ``"mlp_ln"`` (G): Linear → GELU → LayerNorm → Linear (``fc1``, ``norm``, ``fc2``).

    Shapes: (B, in_dim) → (B, out_dim); any leading dimensions are kept.
    """

    def __init__(
        self, *, in_dim: int, out_dim: int = DEFAULT_TEACHER_DIM, hidden_dim: int | None = None, kind: str = "mlp3"
    ) -> None:
        super().__init__()
        hidden = 4 * in_dim if hidden_dim is None else hidden_dim
        for name, value in (("in_dim", in_dim), ("out_dim", out_dim), ("hidden_dim", hidden)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"ClsHead: {name} must be a positive integer, got {value!r}")
        if kind not in CLS_HEADS:
            raise ConfigError(f"ClsHead: kind={kind!r}; valid: {', '.join(CLS_HEADS)}")
        self.in_dim = in_dim
        self.out_dim = out_dim
        self.hidden_dim = hidden
        self.kind = kind
        self.fc1 = nn.Linear(in_dim, hidden)
        self.act = nn.GELU()
        if kind == "mlp3":
            self.fc2 = nn.Linear(hidden, hidden)
            self.fc3 = nn.Linear(hidden, out_dim)
        else:
            self.norm = nn.LayerNorm(hidden)
            self.fc2 = nn.Linear(hidden, out_dim)

    def forward(self, cls: Tensor) -> Tensor:
        h = self.act(self.fc1(cls))  # (..., hidden_dim)
        if self.kind == "mlp3":
            return self.fc3(self.act(self.fc2(h)))  # (..., out_dim)
        return self.fc2(self.norm(h))  # (..., out_dim)


def _not_found(path: str | os.PathLike) -> WeightsError:
    return WeightsError(
        f"teacher weights not found: {path} (download facebook/dinov2-base once and point "
        f"model.teacher.path at it; nothing is downloaded at run time)"
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class Teacher(FrozenHolder):
    """Frozen DINOv2 that maps an ImageNet-normalised view (B, 3, H, W) to its pooled feature (B, dim).

    Args:
        model: the network, already holding its weights: a transformers ``Dinov2Model`` (``source=
            "transformers"``) or a timm ``VisionTransformer`` (``source="timm"``). It is frozen here
            (``requires_grad_(False)``, eval mode) and kept in eval mode whatever ``train()`` is called.
        source: ``"transformers"``, ``"timm"`` or ``"lpips-vgg16"`` (a
            :class:`~mergevq.tokenizer.vgg_teacher.VGG16Pooled`); selects how the pooled feature is read.

    The input is the weak 224 px view as the data pipeline gives it (ImageNet mean/std normalised).
    ``forward`` runs under ``torch.no_grad()`` (not ``inference_mode``: its output is the target of a
    loss whose backward saves it). The real teacher (DINOv2 ViT-B/14) gives ``dim == 768``; tests use
    tiny random stand-ins whose ``dim`` is their hidden size.
    """

    def __init__(self, *, model: nn.Module, source: str) -> None:
        if source not in TEACHER_SOURCES:
            raise ConfigError(f"unknown teacher source {source!r}; choose one of {', '.join(TEACHER_SOURCES)}")
        if not isinstance(model, nn.Module):
            raise ConfigError(f"Teacher: model must be an nn.Module, got {type(model).__name__}")
        # FrozenHolder: frozen, eval mode, outside ``_modules`` (never in a parent's state_dict,
        # parameters() or apply()), but moved by .to() / .cuda() / .double().
        super().__init__(module=model)
        self.source = source
        self.dim = self._feature_dim(model, source)

    @staticmethod
    def _feature_dim(model: nn.Module, source: str) -> int:
        if source == "transformers":
            config = getattr(model, "config", None)
            dim = getattr(config, "hidden_size", None)
        elif source == LPIPS_VGG16:
            dim = getattr(model, "num_features", None)
        else:
            dim = getattr(model, "num_features", None) or getattr(model, "embed_dim", None)
        if not isinstance(dim, int):
            raise ConfigError(
                f"Teacher: cannot read the feature width of a {type(model).__name__} as a {source} model"
            )
        return dim

    @property
    def model(self) -> nn.Module:
        """The wrapped (frozen) network."""
        return self.module

    def extra_repr(self) -> str:
        return f"source={self.source!r}, dim={self.dim}, model={type(self.module).__name__} (frozen, not saved)"

    # ----------------------------------------------------------------------------------------------

    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) ImageNet-normalised → (B, dim): the final-norm [CLS] token."""
        model = self.held_eval()
        with torch.no_grad():
            if self.source == "transformers":
                return model(pixel_values=x).pooler_output  # (B, dim) = layernorm(h_L)[:, 0]
            if self.source == LPIPS_VGG16:
                return model(x)  # (B, 512): relu5_3 averaged over space
            return model.forward_features(x)[:, 0]  # (B, 1 + R + N, dim) -> (B, dim); norm applied

    # ----------------------------------------------------------------------------------------------
    # explicit loading

    @classmethod
    def from_transformers(cls, path: str | os.PathLike) -> Teacher:
        """Load ``transformers.Dinov2Model`` from a local folder (``config.json`` + ``model.safetensors``
        or ``pytorch_model.bin``, as written by ``save_pretrained`` or a hub snapshot of
        facebook/dinov2-base). Every model weight must be in the file (no silent random init)."""
        folder = Path(path).expanduser()
        if not (folder / "config.json").is_file():
            raise _not_found(folder / "config.json" if folder.is_dir() else folder)
        from transformers import Dinov2Model

        try:
            model, info = Dinov2Model.from_pretrained(
                str(folder), local_files_only=True, output_loading_info=True, dtype=torch.float32
            )
        except OSError as exc:
            raise WeightsError(
                f"teacher weights not loadable from {folder} ({_first_line(exc)}); expected config.json and "
                f"model.safetensors or pytorch_model.bin of facebook/dinov2-base"
            ) from None
        except Exception as exc:  # noqa: BLE001 - a corrupt or foreign file, reported in one line
            raise WeightsError(f"teacher weights in {folder} are not a Dinov2Model ({_first_line(exc)})") from None
        missing = sorted(info.get("missing_keys") or ())
        mismatched = sorted(str(k) for k in (info.get("mismatched_keys") or ()))
        if missing or mismatched:
            bad = (missing + mismatched)[:3]
            raise WeightsError(
                f"teacher weights in {folder} do not fit Dinov2Model: {len(missing)} missing and "
                f"{len(mismatched)} mismatched tensors (e.g. {', '.join(bad)})"
            )
        return cls(model=model, source="transformers")

    @classmethod
    def from_timm(
        cls,
        model_name: str,
        checkpoint: str | os.PathLike,
        *,
        img_size: int = 224,
        embed_dim: int | None = None,
        depth: int | None = None,
        num_heads: int | None = None,
    ) -> Teacher:
        """Build ``timm.create_model(model_name, pretrained=False, num_classes=0, img_size=img_size)``
        (``embed_dim`` / ``depth`` / ``num_heads``, when given, override the named architecture: for
        small stand-ins) and load a local state-dict file strictly (.safetensors, or .pth/.pt/.bin read with
        ``weights_only``). timm-format and Meta's original DINOv2 checkpoints are accepted: timm's own
        checkpoint filter maps them and resamples ``pos_embed`` to the ``img_size`` grid with bicubic
        interpolation *without* antialiasing, which is what transformers' Dinov2 does on the fly, so
        both sources give the same feature at the same input size. Inputs must then be
        ``img_size`` × ``img_size``."""
        from mergevq.tokenizer.init import load_state_dict_file

        file = Path(checkpoint).expanduser()
        if not file.is_file():
            raise _not_found(file)
        state = load_state_dict_file(file)
        import timm
        from timm.models.vision_transformer import checkpoint_filter_fn

        try:
            overrides = {
                k: v for k, v in (("embed_dim", embed_dim), ("depth", depth), ("num_heads", num_heads)) if v is not None
            }
            model = timm.create_model(model_name, pretrained=False, num_classes=0, img_size=img_size, **overrides)
        except (RuntimeError, TypeError) as exc:  # "Unknown model (...)" / not a ViT (no img_size)
            raise ConfigError(f"teacher model_name {model_name!r}: {_first_line(exc)}") from None
        try:
            state = checkpoint_filter_fn(dict(state), model, antialias=False)
            model.load_state_dict(state, strict=True)
        except Exception as exc:  # noqa: BLE001 - wrong architecture / corrupt tensors
            raise WeightsError(
                f"teacher weights {file} do not fit timm model {model_name!r} ({_first_line(exc)})"
            ) from None
        return cls(model=model, source="timm")

    @classmethod
    def from_lpips_vgg16(cls, weights_dir: str | os.PathLike | None = None, *, random_init: bool = False) -> Teacher:
        """The VGG-16 of the LPIPS weights prepared by ``mergevq prepare-weights`` in ``weights_dir``
        (None: its default folder), loaded strictly; ``random_init``: a seeded random stand-in."""
        from mergevq.tokenizer.vgg_teacher import load_lpips_vgg16

        return cls(model=load_lpips_vgg16(weights_dir=weights_dir, random_init=random_init), source=LPIPS_VGG16)


def build_teacher(*, source: str, path: str | None = None, model_name: str | None = None, img_size: int = 224,
                  random_init: bool = False) -> Teacher:
    """Config entry point (``target: mergevq.tokenizer.alignment.build_teacher``).

    ``source="transformers"``: ``path`` is a local Dinov2Model folder; ``model_name`` must be unset.
    ``source="timm"``: ``path`` is a local state-dict file and ``model_name`` the timm architecture
    (e.g. ``vit_base_patch14_dinov2``); ``img_size`` is the input size (the weak view, 224).
    ``source="lpips-vgg16"``: ``path`` is the folder ``mergevq prepare-weights`` wrote (null: its
    default); ``random_init: true`` builds a random stand-in instead (tests, no file read). It takes
    any input size (the data's ``view_size``), so ``img_size`` is not used.
    """
    if random_init and source != LPIPS_VGG16:
        raise ConfigError(f"teacher random_init is only for source {LPIPS_VGG16} (a DINOv2 teacher must be loaded)")
    if source == LPIPS_VGG16:
        if model_name is not None:
            raise ConfigError(f"teacher model_name is only used with source: timm, not {LPIPS_VGG16}")
        return Teacher.from_lpips_vgg16(path, random_init=random_init)
    if not path:
        raise ConfigError(f"teacher source {source} needs path (a local DINOv2 folder or file)")
    if source == "transformers":
        if model_name is not None:
            raise ConfigError("teacher model_name is only used with source: timm (transformers reads config.json)")
        return Teacher.from_transformers(path)
    if source == "timm":
        if not model_name:
            raise ConfigError("teacher source timm needs model_name (e.g. vit_base_patch14_dinov2)")
        return Teacher.from_timm(model_name, path, img_size=img_size)
    raise ConfigError(f"unknown teacher source {source!r}; choose one of {', '.join(TEACHER_SOURCES)}")


__all__ = ["CLS_HEADS", "DEFAULT_TEACHER_DIM", "LPIPS_VGG16", "TEACHER_SOURCES", "ClsHead", "Teacher", "build_teacher"]
