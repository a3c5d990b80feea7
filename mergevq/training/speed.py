"""How the Stage 1 training step runs: ``torch.compile`` or eager, channels_last or NCHW (issue #14).

Two settings of ``model.params`` in the tokenizer recipes:

* ``compile: auto | on | off`` — compile the tokenizer's and the discriminator's forward (their
  backward follows through AOTAutograd). ``auto`` compiles on CUDA only: on a 2-core CPU the compiled
  CNN step measured no faster than eager (a conv-bound backward; compiling two ResBlocks took 26 s and
  then ran 3.2–5.6 s against eager's 2.3–3.5 s), so CPU runs stay eager unless ``on`` asks for it.
* ``channels_last: true | false`` — images enter the CNN stem, the decoder's CNN half and the
  discriminator in channels_last (NHWC) layout, which oneDNN convolutions, GroupNorm and SiLU run
  without layout conversions; the convolution weights are stored channels_last too (state-dict keys
  and values are unchanged, exports are written contiguous), so no convolution converts a weight per
  call. The values equal the NCHW ones up to float rounding (tests/test_train_speed.py).

A compile failure (no C++ compiler, an unsupported op, an inductor error) is never fatal: the call
is repeated eagerly, a warning names the error once, and the rest of the run stays eager. The
backward graph is compiled together with the forward (``force_non_lazy_backward_lowering``), so a
backward that cannot compile fails in the forward call, where the fallback can still catch it
before any gradient has been accumulated.

The compiled callables are held by :class:`CompiledOrEager`, outside the module tree, so state-dict
keys never gain ``_orig_mod.`` and ``copy.deepcopy`` of a network (the EMA) copies plain modules.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch

from mergevq.errors import ConfigError

__all__ = ["COMPILE_CHOICES", "CompiledOrEager", "StepSpeed", "as_layout", "resolve_speed"]

log = logging.getLogger(__name__)

COMPILE_CHOICES = ("auto", "on", "off")
RECOMPILE_LIMIT = 64
CompileSetting = Literal["auto", "on", "off"]


@dataclass(frozen=True)
class StepSpeed:
    """The resolved settings: whether the step compiles and whether images run channels_last."""

    compile: bool
    channels_last: bool

    def describe(self) -> str:
        """The one log line a run prints at start."""
        mode = "torch.compile (inductor)" if self.compile else "eager"
        layout = "channels_last" if self.channels_last else "contiguous (NCHW)"
        return f"training step: {mode}, {layout}"

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format


def check_settings(compile: Any, channels_last: Any) -> None:
    """One-line ConfigErrors for values outside the two settings' choices."""
    if not isinstance(compile, str) or compile not in COMPILE_CHOICES:
        raise ConfigError(f"model.params.compile must be one of {', '.join(COMPILE_CHOICES)}, got {compile!r}")
    if not isinstance(channels_last, bool):
        raise ConfigError(f"model.params.channels_last must be true or false, got {channels_last!r}")


def resolve_speed(*, compile: CompileSetting, channels_last: bool, device: torch.device) -> StepSpeed:
    """``auto`` compiles on CUDA only (module docstring: measured no gain on CPU)."""
    check_settings(compile, channels_last)
    enabled = compile == "on" or (compile == "auto" and device.type == "cuda")
    return StepSpeed(compile=enabled, channels_last=channels_last)


def as_layout(x: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
    """``x`` (B, C, H, W) in ``memory_format`` (no copy when it already is)."""
    return x.contiguous(memory_format=memory_format)


def _compile_errors() -> tuple[type[BaseException], ...]:
    """The exception types that mean "this could not be compiled" (not an error of the model)."""
    from torch._dynamo import exc as dynamo_exc

    errors: list[type[BaseException]] = [dynamo_exc.TorchDynamoException]
    inductor_error = getattr(getattr(torch, "_inductor", None), "exc", None)
    if inductor_error is not None and hasattr(inductor_error, "InductorError"):
        errors.append(inductor_error.InductorError)
    return tuple(errors)


class CompiledOrEager:
    """``fn`` compiled with ``torch.compile`` when ``enabled``; eager after the first compile failure.

    Calling it runs the compiled function; if compiling raises, the call is repeated with ``fn``
    itself, a warning naming ``name`` and the error is issued, and every later call is eager.
    ``compiler`` is ``torch.compile`` (a parameter so tests can make compiling fail)."""

    def __init__(
        self, fn: Callable[..., Any], *, name: str, enabled: bool,
        compiler: Callable[..., Callable[..., Any]] | None = None,
    ) -> None:
        self.fn = fn
        self.name = name
        self.compiled: Callable[..., Any] | None = None
        if enabled:
            self.compiled = (compiler or torch.compile)(fn)

    @property
    def active(self) -> bool:
        """Whether calls still go through the compiled function."""
        return self.compiled is not None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.compiled is None:
            return self.fn(*args, **kwargs)
        import torch._dynamo.config
        import torch._functorch.config

        try:
            # one graph per kept-token count and view (K candidates x image sizes): more than the
            # default 8 recompiles of a training run are expected, not a sign of trouble
            with torch._functorch.config.patch(force_non_lazy_backward_lowering=True), \
                    torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT), warnings.catch_warnings():
                # the merge schedule (plan_merges) is an lru_cache'd pure function of ints: tracing
                # through its body, as dynamo does, is exact
                warnings.filterwarnings("ignore", message="Dynamo detected a call to a `functools.lru_cache`")
                return self.compiled(*args, **kwargs)
        except _compile_errors() as err:
            first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
            warnings.warn(
                f"torch.compile of the {self.name} failed ({type(err).__name__}: {first_line}); "
                "continuing in eager mode",
                RuntimeWarning,
                stacklevel=2,
            )
            log.warning("training step: eager (torch.compile of the %s failed)", self.name)
            self.compiled = None
            return self.fn(*args, **kwargs)
