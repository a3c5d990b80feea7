"""Compute backend selection: accelerator (cpu / cuda / npu), precision and devices for Lightning.

``select_backend`` validates what the user asked for against what this machine has and returns a
frozen :class:`Backend`. ``Backend.trainer_kwargs()`` turns it into the ``accelerator``, ``devices``,
``num_nodes``, ``strategy`` and ``precision`` (or precision ``plugins``) arguments of
``lightning.pytorch.Trainer``; code that runs outside a Trainer (evaluation, sampling) uses
``Backend.device(local_rank)`` and ``Backend.autocast_dtype``.

Every user mistake (unknown accelerator or precision, CUDA requested but not visible, ``torch_npu``
missing, too many devices, fp16 autocast on CPU) raises :class:`mergevq.errors.BackendError` with a
one-line message that names the value and what is expected.

Ascend NPU. Lightning has no NPU accelerator, so :class:`NPUAccelerator` plugs one in. ``torch_npu``
is imported only when ``accelerator="npu"`` is requested (or ``"auto"`` finds it installed); it adds
``torch.npu`` and renames torch's ``privateuse1`` device type to ``"npu"``. The accelerator is
registered in Lightning's ``AcceleratorRegistry`` under ``"npu"`` on the first npu selection.
Two NPU details that Lightning would otherwise get wrong are handled here: its automatic strategy
puts any non-CUDA single device on the CPU (so a ``SingleDeviceStrategy`` on the NPU is given
explicitly), and its mixed-precision plugin autocasts on ``"cuda"`` for every accelerator that is not
cpu or mps (so an explicit ``MixedPrecision`` plugin with the NPU device type is given). DDP on NPU
uses the ``"hccl"`` process group backend.

What is tested (tests/test_backend.py, CPU only): CPU selection with every precision, all error
messages, and the NPU wiring against a stand-in ``torch_npu`` / ``torch.npu`` (registration, device
count, device objects, strategy and precision plugin, Trainer construction; the ``"npu"`` device type
rename runs in a subprocess because it cannot be undone). The NPU path has NOT been run on Ascend
hardware; the ``@pytest.mark.npu`` / ``@pytest.mark.gpu`` tests are skipped without the hardware.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from dataclasses import dataclass
from typing import Any

import torch
from lightning.pytorch.accelerators import Accelerator, AcceleratorRegistry

from mergevq.errors import BackendError

__all__ = [
    "ACCELERATORS",
    "PRECISIONS",
    "STRATEGIES",
    "Backend",
    "NPUAccelerator",
    "configure_cuda_flags",
    "make_strategy",
    "register_npu_accelerator",
    "select_backend",
]

_log = logging.getLogger(__name__)

ACCELERATORS: tuple[str, ...] = ("cpu", "cuda", "npu")
PRECISIONS: tuple[str, ...] = ("32", "32-true", "bf16-mixed", "16-mixed", "bf16-true")
STRATEGIES: tuple[str, ...] = ("auto", "ddp", "ddp_spawn", "fsdp")

_PROCESS_GROUP_BACKEND = {"cpu": "gloo", "cuda": "nccl", "npu": "hccl"}
_AUTOCAST_DTYPE = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}

_NPU_INSTALL_HINT = "pip install torch-npu matching your CANN; see README 'Ascend NPU install'"


# --------------------------------------------------------------------------------------------------
# NPU plumbing
# --------------------------------------------------------------------------------------------------


def _torch_npu_namespace() -> Any | None:
    """``torch.npu`` as installed by ``torch_npu``; None if torch_npu has not been imported."""
    return getattr(torch, "npu", None)


def _npu_device_type() -> str:
    """The torch device type of NPUs. torch_npu renames torch's privateuse1 backend to ``"npu"``
    (``torch.utils.rename_privateuse1_backend("npu")``), so on a real install this is ``"npu"``;
    without the rename torch only knows the name ``"privateuseone"``."""
    try:
        return str(torch._C._get_privateuse1_backend_name())
    except AttributeError:  # pragma: no cover - very old / very new torch
        return "npu"


def _import_torch_npu() -> Any:
    """Import ``torch_npu`` (which installs ``torch.npu``); BackendError if it cannot be imported."""
    try:
        return importlib.import_module("torch_npu")
    except ImportError as e:
        raise BackendError(
            f"accelerator=npu requested but torch_npu is not installed ({_NPU_INSTALL_HINT})"
        ) from e
    except Exception as e:  # CANN libraries missing or mismatched raise all kinds of errors
        first = (str(e).strip().splitlines() or [""])[0]
        raise BackendError(
            f"accelerator=npu requested but importing torch_npu failed ({type(e).__name__}: {first}); "
            "check that torch-npu matches your torch and CANN versions"
        ) from e


class NPUAccelerator(Accelerator):
    """Lightning accelerator for Huawei Ascend NPUs through ``torch_npu`` (``torch.npu``).

    Pass an instance as ``Trainer(accelerator=NPUAccelerator())`` (``Backend.trainer_accelerator``
    does), or the name ``"npu"`` once :func:`register_npu_accelerator` has run. ``torch_npu`` must
    have been imported first (``select_backend`` does that).
    """

    def setup_device(self, device: torch.device) -> None:
        if device.type != _npu_device_type():
            raise BackendError(f"NPUAccelerator got device {device}; expected an NPU device")
        torch.npu.set_device(device)

    def setup(self, trainer: Any) -> None:
        pass

    def teardown(self) -> None:
        npu = _torch_npu_namespace()
        if npu is not None and hasattr(npu, "empty_cache"):
            npu.empty_cache()

    @staticmethod
    def parse_devices(devices: Any) -> list[int]:
        """``int`` n (or -1 for all), a string ``"2"`` / ``"0,1"``, or a list of indices -> indices."""
        available = NPUAccelerator.auto_device_count()
        if isinstance(devices, str):
            text = devices.strip()
            if text in ("auto", "-1"):
                devices = -1
            elif "," in text:
                devices = [int(p) for p in text.split(",") if p.strip()]
            elif text.isdigit():
                devices = int(text)
            else:
                raise BackendError(
                    f"devices={devices!r} is not valid for the NPU; expected an int, 'auto' or '0,1'"
                )
        if isinstance(devices, bool):
            raise BackendError(f"devices={devices!r} is not valid; expected an int >= 1 or 'auto'")
        if isinstance(devices, int):
            if devices == -1:
                devices = available
            if devices < 1:
                raise BackendError(f"devices={devices} is not valid; expected an int >= 1 or 'auto'")
            ids = list(range(devices))
        else:
            ids = [int(i) for i in devices]
        bad = [i for i in ids if i < 0 or i >= available]
        if bad or not ids:
            raise BackendError(
                f"devices={devices!r} asks for NPU indices {ids} but only {available} NPU(s) are visible"
            )
        return ids

    @staticmethod
    def get_parallel_devices(devices: Any) -> list[torch.device]:
        if isinstance(devices, int):
            devices = list(range(devices))
        dtype = _npu_device_type()
        return [torch.device(dtype, int(i)) for i in devices]

    @staticmethod
    def auto_device_count() -> int:
        npu = _torch_npu_namespace()
        return int(npu.device_count()) if npu is not None else 0

    @staticmethod
    def is_available() -> bool:
        npu = _torch_npu_namespace()
        if npu is None:
            return False
        try:
            return bool(npu.is_available())
        except Exception:  # driver errors mean "not available"
            return False

    @staticmethod
    def name() -> str:
        return "npu"

    def get_device_stats(self, device: Any) -> dict[str, Any]:
        npu = _torch_npu_namespace()
        if npu is not None and hasattr(npu, "memory_stats"):
            return dict(npu.memory_stats(device))
        return {}

    @classmethod
    def register_accelerators(cls, accelerator_registry: Any) -> None:
        """Register under ``"npu"``; a second call (or a name already taken) changes nothing."""
        if cls.name() in accelerator_registry:
            return
        accelerator_registry.register(cls.name(), cls, description=cls.__name__)


def register_npu_accelerator() -> None:
    """Make ``Trainer(accelerator="npu")`` resolve to :class:`NPUAccelerator` (idempotent)."""
    NPUAccelerator.register_accelerators(AcceleratorRegistry)


# --------------------------------------------------------------------------------------------------
# Backend
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Backend:
    """A validated compute backend.

    accelerator: ``"cpu"``, ``"cuda"`` or ``"npu"`` (never ``"auto"``; that is resolved).
    precision:   Lightning precision string: ``"32-true"``, ``"bf16-mixed"``, ``"16-mixed"`` or
                 ``"bf16-true"``.
    devices:     devices per node (on cpu: processes per node).
    """

    accelerator: str
    precision: str
    devices: int = 1

    @property
    def device_type(self) -> str:
        """torch device type: ``"cpu"``, ``"cuda"``, or the NPU type (``"npu"`` with torch_npu)."""
        return _npu_device_type() if self.accelerator == "npu" else self.accelerator

    def device(self, local_rank: int = 0) -> torch.device:
        """The ``torch.device`` a process with this local rank works on."""
        if self.accelerator == "cpu":
            return torch.device("cpu")
        if not 0 <= local_rank < self.devices:
            raise BackendError(
                f"local_rank={local_rank} is out of range for devices={self.devices} "
                f"on accelerator={self.accelerator}"
            )
        return torch.device(self.device_type, local_rank)

    @property
    def trainer_accelerator(self) -> str | Accelerator:
        """The ``accelerator`` argument for ``lightning.pytorch.Trainer``."""
        if self.accelerator == "npu":
            return NPUAccelerator()
        return self.accelerator

    @property
    def ddp_process_group_backend(self) -> str:
        """torch.distributed backend for DDP: gloo (cpu), nccl (cuda), hccl (npu)."""
        return _PROCESS_GROUP_BACKEND[self.accelerator]

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """dtype for ``torch.autocast(device_type=self.device_type, ...)`` or None (no autocast)."""
        return _AUTOCAST_DTYPE.get(self.precision)

    def inference_autocast_dtype(self, command: str) -> torch.dtype | None:
        """:attr:`autocast_dtype` for an inference ``command``, which loads fp32 weights and autocasts:
        ``bf16-true`` (bf16 weights, a Lightning training setting) would silently run fp32 there, so it
        is refused with the setting to use instead."""
        if self.precision == "bf16-true":
            raise BackendError(f"precision=bf16-true is a training setting; {command} runs bf16 as "
                               "precision=bf16-mixed (bf16 autocast over fp32 weights)")
        return self.autocast_dtype

    def precision_plugin(self) -> Any | None:
        """An explicit Lightning precision plugin where the ``precision`` string would be wrong.

        Only NPU mixed precision needs one (Lightning would autocast on ``"cuda"``); everything
        else returns None and is expressed by ``Trainer(precision=self.precision)``.
        """
        if self.accelerator != "npu" or self.precision not in _AUTOCAST_DTYPE:
            return None
        from lightning.pytorch.plugins.precision import MixedPrecision

        scaler = None
        if self.precision == "16-mixed":
            npu_amp = getattr(_torch_npu_namespace(), "amp", None)
            scaler_cls = getattr(npu_amp, "GradScaler", None)
            scaler = scaler_cls() if scaler_cls is not None else torch.amp.GradScaler(self.device_type)
        return MixedPrecision(self.precision, device=self.device_type, scaler=scaler)

    def trainer_kwargs(
        self, *, strategy: str = "auto", num_nodes: int = 1, find_unused_parameters: bool = False
    ) -> dict[str, Any]:
        """``accelerator``, ``devices``, ``num_nodes``, ``strategy`` and ``precision`` or
        ``plugins`` for ``lightning.pytorch.Trainer(**backend.trainer_kwargs(), ...)``.
        ``find_unused_parameters`` is passed to DDP (a GAN trained with manual optimisation needs it:
        each backward reaches only one of the two networks)."""
        kwargs: dict[str, Any] = {
            "accelerator": self.trainer_accelerator,
            "devices": self.devices,
            "num_nodes": num_nodes,
            "strategy": make_strategy(
                self, strategy=strategy, num_nodes=num_nodes, find_unused_parameters=find_unused_parameters
            ),
        }
        plugin = self.precision_plugin()
        if plugin is not None:
            kwargs["plugins"] = [plugin]
        else:
            kwargs["precision"] = self.precision
        return kwargs


def _normalize_precision(precision: Any) -> str:
    # YAML reads `precision: 32` as an int; accept it.
    text = str(precision).strip().lower() if isinstance(precision, (str, int)) else None
    if isinstance(precision, bool) or text not in PRECISIONS:
        raise BackendError(f"precision={precision!r} is not supported; expected one of: {', '.join(PRECISIONS)}")
    return "32-true" if text == "32" else text


def _resolve_devices(devices: Any, *, accelerator: str, available: int | None) -> int:
    """'auto' / -1 -> all available (1 on cpu); an int >= 1 checked against ``available``."""
    if isinstance(devices, str):
        text = devices.strip().lower()
        if text in ("auto", "-1"):
            devices = -1
        elif text.isdigit():
            devices = int(text)
    if isinstance(devices, bool) or not isinstance(devices, int) or devices == 0 or devices < -1:
        raise BackendError(f"devices={devices!r} is not valid; expected an int >= 1 or 'auto'")
    if devices == -1:
        return 1 if available is None else available
    if available is not None and devices > available:
        raise BackendError(
            f"devices={devices} requested but only {available} {accelerator.upper()} device(s) are visible"
        )
    return devices


def _auto_accelerator() -> str:
    if torch.cuda.is_available():
        return "cuda"
    try:
        npu_installed = importlib.util.find_spec("torch_npu") is not None
    except (ImportError, ValueError):  # a broken or stubbed module in sys.modules
        npu_installed = False
    if npu_installed:
        try:
            _import_torch_npu()
        except BackendError as e:
            _log.warning("accelerator=auto: torch_npu is installed but unusable (%s); using cpu", e)
            return "cpu"
        if NPUAccelerator.is_available():
            return "npu"
    return "cpu"


def select_backend(*, accelerator: str, precision: str, devices: int | str = "auto") -> Backend:
    """Validate ``accelerator`` / ``precision`` / ``devices`` on this machine and return a Backend.

    accelerator: ``cpu | cuda | npu | auto`` (auto: cuda if visible, else npu if torch_npu is
    installed and sees a device, else cpu). precision: one of :data:`PRECISIONS` (``"32"`` means
    ``"32-true"``). devices: int >= 1 or ``"auto"`` (all visible devices; 1 process on cpu).
    On cuda this also applies :func:`configure_cuda_flags`. Raises BackendError.
    """
    acc = accelerator.strip().lower() if isinstance(accelerator, str) else accelerator
    if acc not in (*ACCELERATORS, "auto"):
        raise BackendError(
            f"accelerator={accelerator!r} is not supported; expected one of: auto, {', '.join(ACCELERATORS)}"
        )
    prec = _normalize_precision(precision)
    if acc == "auto":
        acc = _auto_accelerator()

    if acc == "cpu":
        if prec == "16-mixed":
            raise BackendError(
                "precision=16-mixed is not supported on accelerator=cpu (fp16 autocast is not "
                "supported on CPU); use bf16-mixed or 32"
            )
        n = _resolve_devices(devices, accelerator=acc, available=None)
        return Backend(accelerator="cpu", precision=prec, devices=n)

    if acc == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only torch build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}"
            raise BackendError(
                "accelerator=cuda requested but no CUDA device is visible (torch.cuda.is_available() "
                f"is False); torch {torch.__version__} is {build}: check CUDA_VISIBLE_DEVICES and the "
                "driver, or use accelerator=cpu"
            )
        n = _resolve_devices(devices, accelerator=acc, available=torch.cuda.device_count())
        if prec.startswith("bf16") and not torch.cuda.is_bf16_supported():
            raise BackendError(
                f"precision={prec} requested but this GPU has no bfloat16 support; use 16-mixed or 32"
            )
        backend = Backend(accelerator="cuda", precision=prec, devices=n)
        configure_cuda_flags(backend)
        return backend

    # npu
    _import_torch_npu()
    if not NPUAccelerator.is_available():
        raise BackendError(
            "accelerator=npu requested but torch.npu.is_available() is False; check the Ascend "
            "driver / CANN install and ASCEND_RT_VISIBLE_DEVICES, or use accelerator=cpu"
        )
    n = _resolve_devices(devices, accelerator=acc, available=NPUAccelerator.auto_device_count())
    if prec.startswith("bf16"):
        bf16_ok = getattr(torch.npu, "is_bf16_supported", None)
        if bf16_ok is not None and not bf16_ok():
            raise BackendError(
                f"precision={prec} requested but this NPU has no bfloat16 support; use 16-mixed or 32"
            )
    register_npu_accelerator()
    return Backend(accelerator="npu", precision=prec, devices=n)


def configure_cuda_flags(backend: Backend) -> bool:
    """Allow TF32 for fp32 matmuls / convolutions on CUDA (Ampere and newer use it; older GPUs ignore
    it). Does nothing for other accelerators. Returns whether the flags were set."""
    if backend.accelerator != "cuda":
        return False
    torch.set_float32_matmul_precision("high")
    torch.backends.cudnn.allow_tf32 = True
    return True


def make_strategy(
    backend: Backend, *, strategy: str = "auto", num_nodes: int = 1, find_unused_parameters: bool = False
) -> Any:
    """Lightning ``strategy`` argument for ``backend``: a name or a Strategy instance.

    ``auto``: one process in total -> Lightning's default (on npu an explicit single-device
    strategy, since Lightning would put a non-CUDA device on the CPU); more -> like ``ddp``.
    ``ddp`` / ``ddp_spawn``: ``DDPStrategy`` with the backend's process group (gloo / nccl / hccl).
    ``fsdp``: cuda only (Lightning's FSDP strategy rejects other accelerators).
    """
    from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy

    name = strategy.strip().lower() if isinstance(strategy, str) else strategy
    if name not in STRATEGIES:
        raise BackendError(f"strategy={strategy!r} is not supported; expected one of: {', '.join(STRATEGIES)}")
    if isinstance(num_nodes, bool) or not isinstance(num_nodes, int) or num_nodes < 1:
        raise BackendError(f"num_nodes={num_nodes!r} is not valid; expected an int >= 1")
    pg = backend.ddp_process_group_backend
    world = backend.devices * num_nodes
    unused = bool(find_unused_parameters)
    if name == "auto":
        if world > 1:
            return DDPStrategy(process_group_backend=pg, find_unused_parameters=unused)
        if backend.accelerator == "npu":
            return SingleDeviceStrategy(device=backend.device(0))
        return "auto"
    if name == "ddp":
        return DDPStrategy(process_group_backend=pg, find_unused_parameters=unused)
    if name == "ddp_spawn":
        return DDPStrategy(start_method="spawn", process_group_backend=pg, find_unused_parameters=unused)
    # fsdp
    if backend.accelerator != "cuda":
        raise BackendError(
            f"strategy=fsdp needs accelerator=cuda, got accelerator={backend.accelerator}; use ddp"
        )
    from lightning.pytorch.strategies import FSDPStrategy

    return FSDPStrategy(process_group_backend=pg)
