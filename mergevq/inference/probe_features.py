"""Features of a frozen MergeVQ encoder for the linear probe (DESIGN §6 "Representation").

The encoder keeps K = ``num_keep`` tokens (checked with ``MergeVQ.check_num_keep``) and the feature
of an image is either its last block's [CLS] token (``"cls"``; the encoder has no final norm) or the
plain mean of its K kept tokens (``"mean"``), both of the ViT width D. Only the encoder runs: no quantiser, recovery or decoder.

:class:`ProbeEncoder` holds the tokenizer outside the parameters and state dict of whatever module
owns it (``taming.modules.frozen.FrozenHolder``): frozen, always in eval mode, never in a checkpoint
or an optimiser. :func:`extract_features` runs it once over a labelled data set (the cheap path:
every probe epoch then only touches the (N, D) feature table).
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
from torch.utils.data import DataLoader, Dataset

from mergevq.errors import ConfigError
from mergevq.inference.progress import loader_items, progress_bar, track
from mergevq.tokenizer.model import MergeVQ
from taming.data.base import collate_skip_none
from taming.modules.frozen import FrozenHolder

__all__ = ["FEATURES", "FeatureKind", "ProbeEncoder", "ProbeFeatures", "batch_labels", "check_feature",
           "extract_features"]

FeatureKind = Literal["cls", "mean"]
FEATURES: tuple[str, ...] = get_args(FeatureKind)


def check_feature(name: object, *, key: str = "probe.feature") -> FeatureKind:
    """``name`` if it is a known feature kind, else a one-line ConfigError naming ``key``."""
    if name not in FEATURES:
        raise ConfigError(f"{key} must be one of {', '.join(FEATURES)} ([CLS] token or mean of the kept tokens), "
                          f"got {name!r}")
    return name  # type: ignore[return-value]


class ProbeEncoder(FrozenHolder):
    """images (B, 3, H, W) in [-1, 1] -> features (B, D) of a frozen tokenizer's encoder.

    Args:
        tokenizer: the MergeVQ model (frozen and put in eval mode here).
        num_keep: K, the kept-token count (None: the tokenizer's nominal ``config.num_keep``).
        feature: ``"cls"`` or ``"mean"`` (see the module docstring).
    """

    def __init__(self, *, tokenizer: MergeVQ, num_keep: int | None = None, feature: FeatureKind = "cls") -> None:
        if not isinstance(tokenizer, MergeVQ):
            raise ConfigError(f"ProbeEncoder: tokenizer must be a MergeVQ model, got {type(tokenizer).__name__}")
        super().__init__(module=tokenizer)
        self.num_keep = tokenizer.check_num_keep(tokenizer.config.num_keep if num_keep is None else num_keep)
        self.feature: FeatureKind = check_feature(feature)
        self.dim = tokenizer.config.dim
        self.image_size = tokenizer.config.image_size

    @property
    def tokenizer(self) -> MergeVQ:
        return self.module  # type: ignore[return-value]

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        expected = (3, self.image_size, self.image_size)
        if tuple(images.shape[1:]) != expected:
            raise ConfigError(f"the data set yields images of shape {tuple(images.shape[1:])}, the tokenizer takes "
                              f"{expected}: resize the data set to the tokenizer's image_size={self.image_size}")
        out = self.held_eval().encoder(images, num_keep=self.num_keep)  # tokens (B, K, D), cls (B, D)
        feature = out.cls if self.feature == "cls" else out.tokens.mean(dim=1)  # (B, D)
        return feature.float()


def batch_labels(batch: Mapping[str, Any], *, where: str) -> torch.Tensor:
    """The int64 (b,) class labels of a collated batch; a one-line error when the data set has none."""
    if "class_label" not in batch:
        raise ConfigError(f"{where}: the data set gives no class_label; the linear probe needs a labelled data set")
    labels = torch.as_tensor(batch["class_label"], dtype=torch.int64).reshape(-1)
    if bool((labels < 0).any()):
        raise ConfigError(f"{where}: the data set is unlabelled (class_label -1); for an image folder put every "
                          "image in a class sub-folder (root/<class>/<image>)")
    return labels


@dataclass(frozen=True)
class ProbeFeatures:
    """Features of a whole data set, in data set order (unreadable images left out)."""

    features: torch.Tensor  # (N, D) float32, CPU
    labels: torch.Tensor  # (N,) int64, CPU
    num_skipped: int  # unreadable images left out


def extract_features(
    encoder: ProbeEncoder,
    dataset: Dataset,
    *,
    batch_size: int,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
    autocast_dtype: torch.dtype | None = None,
    where: str = "data",
    is_main: bool = True,
) -> ProbeFeatures:
    """Run ``encoder`` once over ``dataset`` (items ``{"image": (3, H, W) in [-1, 1], "class_label":
    int}``, unreadable ones skipped and counted). Features stay on ``device`` until the one copy to
    the CPU at the end. ``where`` names the data set in error messages and on the progress bar, which
    only ``is_main`` draws."""
    device = torch.device(device)
    encoder = encoder.to(device)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate_skip_none, pin_memory=device.type == "cuda")
    features, labels, skipped = [], [], 0
    autocast = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None else nullcontext()
    with torch.inference_mode(), autocast:
        bar = progress_bar(total=len(dataset), desc=f"features ({where})", unit="img", is_main=is_main)
        for batch in track(loader, bar, count=loader_items):
            skipped += int(batch["num_skipped"])
            if "image" not in batch:  # every image of the batch was unreadable
                continue
            labels.append(batch_labels(batch, where=where))
            features.append(encoder(batch["image"].to(device, non_blocking=True)).float())  # (b, D)
    if not features:
        raise ConfigError(f"{where}: no readable image in the data set ({skipped} skipped)")
    return ProbeFeatures(features=torch.cat(features).cpu(), labels=torch.cat(labels), num_skipped=skipped)
