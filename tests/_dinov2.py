"""Test helper: a transformers Dinov2 layer's tensors under timm's block names, written out by hand
(independent of mergevq.tokenizer.init's own mapping tables)."""

import torch


def hf_layer_tensors(model, layer: int) -> dict:
    """``model`` a transformers ``Dinov2Model``; layer ``layer``'s tensors keyed by timm ``Block`` names
    (q, k, v stacked as timm's qkv)."""
    block = model.encoder.layer[layer]
    att = block.attention
    return {
        "norm1.weight": block.norm1.weight, "norm1.bias": block.norm1.bias,
        "attn.qkv.weight": torch.cat([att.q_proj.weight, att.k_proj.weight, att.v_proj.weight]),
        "attn.qkv.bias": torch.cat([att.q_proj.bias, att.k_proj.bias, att.v_proj.bias]),
        "attn.proj.weight": att.o_proj.weight, "attn.proj.bias": att.o_proj.bias,
        "ls1.gamma": block.layer_scale1.lambda1, "ls2.gamma": block.layer_scale2.lambda1,
        "norm2.weight": block.norm2.weight, "norm2.bias": block.norm2.bias,
        "mlp.fc1.weight": block.mlp.fc1.weight, "mlp.fc1.bias": block.mlp.fc1.bias,
        "mlp.fc2.weight": block.mlp.fc2.weight, "mlp.fc2.bias": block.mlp.fc2.bias,
    }
