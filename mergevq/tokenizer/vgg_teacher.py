"""An offline alignment teacher: the ImageNet VGG-16 inside the prepared LPIPS weights.

DINOv2 (the paper's teacher) cannot be had offline; the VGG-16 conv layers that ``mergevq
prepare-weights`` converts for LPIPS can. :class:`VGG16Pooled` is torchvision's ``vgg16().features``
up to relu5_3 (indices 0..29, the part LPIPS keeps; the last max-pool is left out) followed by a
global average pool: (B, 3, H, W) ImageNet-normalised -> (B, 512). Being fully convolutional it takes
any input size >= 16 px (four 2x poolings); the demo feeds 64 px upsampled crops.

LPIPS scales its [-1, 1] input by ``(x - shift) / scale`` with shift (-.030, -.088, -.188) and scale
(.458, .448, .450), which is exactly ImageNet's mean / std normalisation of [0, 1] pixels, so the
Teacher interface's ImageNet-normalised input is what these weights were trained on.

Building the network never touches the global torch RNG (construction runs under ``fork_rng``), so
a run with this teacher and a run without it initialise the tokenizer identically.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor, nn

from mergevq.errors import WeightsError

FEATURE_DIM = 512  # relu5_3 channels
# torchvision's VGG-16 "D" layout up to relu5_3: conv widths, "M" = 2x2 max-pool.
_LAYOUT: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
RANDOM_SEED = 0  # the random stand-in is the same network on every call


class VGG16Pooled(nn.Module):
    """VGG-16 conv layers up to relu5_3 + global average pool; ``num_features`` = 512."""

    num_features = FEATURE_DIM

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for item in _LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(channels, int(item), kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                channels = int(item)
        self.features = nn.Sequential(*layers)  # keys "0.weight" .. "28.bias", as torchvision / LPIPS

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x).mean(dim=(2, 3))  # (B, 512, h, w) -> (B, 512)


def _new_vgg(*, random_init: bool) -> VGG16Pooled:
    with torch.random.fork_rng(devices=[]):  # keep the caller's RNG stream (tokenizer init) unchanged
        torch.manual_seed(RANDOM_SEED)
        model = VGG16Pooled()
        if random_init:  # torchvision's VGG init keeps activations O(1) through 13 layers
            for module in model.modules():
                if isinstance(module, nn.Conv2d):
                    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                    nn.init.zeros_(module.bias)
    return model


def load_lpips_vgg16(*, weights_dir: str | os.PathLike | None = None, random_init: bool = False) -> VGG16Pooled:
    """The VGG-16 of the prepared LPIPS weights (``<weights_dir>/lpips/vgg.pth``; None: the default
    folder of ``mergevq prepare-weights``), loaded strictly; ``random_init``: a seeded random stand-in
    (tests, ``--quick`` without prepared weights), no file read."""
    model = _new_vgg(random_init=random_init)
    if random_init:
        return model
    from mergevq.pretrained import COMMAND, lpips_backbone_state_dict, lpips_weights_path

    state = lpips_backbone_state_dict("vgg", weights_dir)  # WeightsError naming the command when missing
    try:
        model.features.load_state_dict(state, strict=True)
    except Exception as exc:  # noqa: BLE001 - any mismatch means the file is not what prepare-weights wrote
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"{lpips_weights_path('vgg', weights_dir)} holds no LPIPS VGG-16 backbone ({first}); "
                           f"re-run `{COMMAND} --force`") from None
    return model


def weights_available(weights_dir: str | os.PathLike | None = None) -> bool:
    """Whether the prepared LPIPS VGG file exists (not whether it is valid: loading checks that)."""
    from mergevq.pretrained import LPIPS_FILES, weights_dir as default_dir

    return Path(default_dir(weights_dir), LPIPS_FILES["vgg"]).is_file()


__all__ = ["FEATURE_DIM", "VGG16Pooled", "load_lpips_vgg16", "weights_available"]
