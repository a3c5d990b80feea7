"""Global-alignment loss (DESIGN §4 step 7): temperature-scaled KL from teacher to student.

    L = T² · KL(softmax(t / T) ‖ softmax(s / T)), averaged over the batch, T = 4.

Softening both distributions with T > 1 lets the student match the teacher's whole feature profile,
not just its largest components; the T² factor restores the gradient scale, which the softening
shrinks by 1/T² (Hinton et al., 2015), so the loss weight does not have to change with T.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def alignment_kl(student: Tensor, teacher: Tensor, *, temperature: float = 4.0) -> Tensor:
    """(B, C) student and teacher features → scalar T²·KL(p_teacher ‖ p_student), batch mean.

    The teacher is detached (it is a fixed target; no gradient may reach it even if the caller
    forgot ``no_grad``). Computed in float32 (float64 stays float64) with autocast disabled: a
    log-softmax over 768 entries in bf16 would lose the small differences this loss is about.
    """
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"alignment_kl: temperature must be a positive number, got {temperature!r}")
    if student.dim() != 2 or student.shape != teacher.shape:
        raise ValueError(
            f"alignment_kl expects matching (B, C) tensors, got student {tuple(student.shape)} "
            f"and teacher {tuple(teacher.shape)}"
        )
    dtype = torch.promote_types(torch.promote_types(student.dtype, teacher.dtype), torch.float32)
    with torch.autocast(device_type=student.device.type, enabled=False):
        log_p_student = F.log_softmax(student.to(dtype) / temperature, dim=-1)  # (B, C)
        log_p_teacher = F.log_softmax(teacher.detach().to(dtype) / temperature, dim=-1)  # (B, C)
        # kl_div(input=log q, target=log p, log_target=True) = Σ p (log p − log q); batchmean: / B
        kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
        return (temperature**2) * kl


__all__ = ["alignment_kl"]
