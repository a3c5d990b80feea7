"""One identity for a model's weights, shared by the commands that must recognise them again: a codes
folder names the tokenizer it was extracted with, a sampling folder the MergeAR and tokenizer it was
sampled from (so a resumed run never mixes two models' samples)."""

from __future__ import annotations

import hashlib
import json

import torch

__all__ = ["weights_id"]


def weights_id(model: torch.nn.Module) -> str:
    """sha256 over ``model.config`` (canonical JSON of ``config.to_dict()``) and every state-dict
    tensor (name, dtype, shape, raw bytes, in sorted name order): the same weights give the same id
    on any device. For the project's models (MergeVQ, MergeAR), which all carry such a config."""
    digest = hashlib.sha256()
    digest.update(json.dumps(model.config.to_dict(), sort_keys=True).encode())
    state = model.state_dict()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        digest.update(f"\n{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
