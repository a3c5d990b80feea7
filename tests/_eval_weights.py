"""Small randomly initialised stand-ins for the evaluation networks, written in the real files'
layouts so the whole weight-loading path runs offline (DESIGN §6).

- Inception: torch-fidelity's InceptionV3 state dict with He-initialised convolutions (the default
  init shrinks activations through 90+ layers until every image gets the same features, which would
  make any FID 0) and BatchNorm running statistics that keep each layer's output at unit scale.
- LPIPS: ``lpips.LPIPS`` with a random backbone and lpips's own heads, saved as the full state dict
  ``mergevq prepare-weights`` writes.
"""

from __future__ import annotations

from pathlib import Path

import torch


def write_random_inception(path: Path, *, seed: int = 0) -> Path:
    from mergevq.pretrained import _inception_template

    torch.manual_seed(seed)
    model = _inception_template()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            elif isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.zero_()
                module.running_var.fill_(1.0)
                module.weight.fill_(1.0)
                module.bias.uniform_(-0.1, 0.1)
            elif isinstance(module, torch.nn.Linear):
                torch.nn.init.normal_(module.weight, std=module.in_features ** -0.5)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path


def write_random_lpips(path: Path, *, net: str = "vgg", seed: int = 0) -> Path:
    from mergevq.pretrained import load_lpips

    torch.manual_seed(seed)
    model = load_lpips(net, random_init=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path
