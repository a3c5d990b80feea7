"""Hold a frozen network that moves with its parent but is never saved, trained or re-initialised.

Why: a loss network (LPIPS) or a teacher is loaded from its own file; putting it in the model's
``state_dict`` would bloat every checkpoint, make ``load_state_dict(strict=True)`` depend on it, and
let ``parameters()`` hand it to optimizers, DDP, EMA copies, parameter counts, ``apply()`` (weight
init would overwrite its pretrained weights) and ``requires_grad_()`` (GAN toggling would unfreeze
it). Holding it outside ``_modules`` hides it from all of those at once. The one thing it must still
follow is device and dtype moves, so ``_apply`` (the single funnel behind ``.to()``, ``.cuda()``,
``.cpu()``, ``.double()``, ``.half()``) is forwarded to it explicitly.

Used by the LPIPS wrapper here and by ``mergevq.tokenizer.alignment.Teacher``.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

_HELD = "_frozen_held_module"


class FrozenHolder(nn.Module):
    """Base class for a module that wraps one frozen network kept out of parameters and state dicts.

    Args:
        module: the network, already holding its weights. It is frozen here (``requires_grad_(False)``)
            and put in eval mode; it stays in eval mode whatever ``train()`` the parent calls, because
            dropout or batch-norm updates in a fixed metric network would make the loss noisy and
            silently change the metric.

    Subclasses call ``super().__init__(module=...)`` and reach the network as :attr:`module`
    (e.g. via :meth:`held_eval`, which also undoes a direct ``module.train()`` call).
    The holder itself has no parameters or buffers of its own from the network.
    """

    def __init__(self, *, module: nn.Module) -> None:
        super().__init__()
        if not isinstance(module, nn.Module):
            raise TypeError(f"{type(self).__name__}: module must be an nn.Module, got {type(module).__name__}")
        module.requires_grad_(False)
        module.eval()
        # Bypass nn.Module.__setattr__, which would register it in ``_modules``.
        object.__setattr__(self, _HELD, module)

    @property
    def module(self) -> nn.Module:
        """The held (frozen, eval-mode, never saved) network."""
        return getattr(self, _HELD)

    def held_eval(self) -> nn.Module:
        """The held network, put back in eval mode if someone called ``train()`` on it directly."""
        module = self.module
        if module.training:
            module.eval()
        return module

    # ---------------------------------------------------------------------------------------------
    # module plumbing

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> FrozenHolder:
        # Device/dtype moves of the parent must reach the hidden network too.
        self.module._apply(fn)
        return super()._apply(fn, recurse)

    def train(self, mode: bool = True) -> FrozenHolder:
        super().train(mode)  # ``self.training`` follows the parent; the held network stays in eval
        self.module.eval()
        return self

    def extra_repr(self) -> str:
        return f"held={type(self.module).__name__} (frozen, not saved)"


__all__ = ["FrozenHolder"]
