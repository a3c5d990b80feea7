"""Build the authors' ``MergeVQModel`` for a benchmark worker (run with their venv, their checkout on
PYTHONPATH; nothing here is imported by our side).

From a training config's ``model.init_args``, with everything that would download switched off
through constructor arguments (their files are never edited): no DINOv2 init (``ddconfig.model_path``
dropped), no teacher (``pretrain_teacher=None``), no loss module (``lossconfig`` becomes
``torch.nn.Identity``: its LPIPS would fetch VGG weights), no EMA copy; K fixed through
``ddconfig.merge_num`` (L - K) with the training-time K sampling (``cand_distribution``) dropped.
Random init, fp32.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import yaml

GR_D64_CONFIG = Path("configs") / "gpu_s1" / "imagenet_mergevq_256_GR_d64_8gpu_200ep.yaml"


def offline_init_args(root: Path, *, config: Path, merge_num: int) -> dict:
    """The config's ``model.init_args`` with downloads off and ``merge_num`` fixed."""
    with open(root / config) as f:
        init_args = copy.deepcopy(yaml.safe_load(f)["model"]["init_args"])
    ddconfig = init_args["ddconfig"]
    ddconfig.pop("model_path", None)
    ddconfig.pop("cand_distribution", None)
    ddconfig["merge_num"] = merge_num
    init_args["pretrain_teacher"] = None
    init_args["lossconfig"] = {"target": "torch.nn.Identity"}
    init_args["use_ema"] = False
    return init_args


def build_authors_tokenizer(root: Path, *, config: Path = GR_D64_CONFIG, merge_num: int = 112):
    """Their ``MergeVQModel`` (random init, fp32, train mode); fp32 matmuls at full precision."""
    from taming.models.lfqgan_rep import MergeVQModel  # imports their main.py, which sets "high"

    model = MergeVQModel(**offline_init_args(root, config=config, merge_num=merge_num))
    torch.set_float32_matmul_precision("highest")
    return model
