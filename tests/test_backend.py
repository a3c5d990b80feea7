"""Tests for mergevq.backend: CPU selection, error messages, and the NPU wiring via a stand-in
``torch_npu`` / ``torch.npu`` (no Ascend hardware here; the npu/gpu-marked tests need hardware)."""

from __future__ import annotations

import importlib.machinery
import json
import subprocess
import sys
import textwrap
import types

import pytest
import torch

import mergevq  # noqa: F401  (installs the torchvision shim before lightning is imported)
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.accelerators import AcceleratorRegistry
from lightning.pytorch.plugins.precision import MixedPrecision
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy

from mergevq.backend import (
    PRECISIONS,
    Backend,
    NPUAccelerator,
    configure_cuda_flags,
    make_strategy,
    select_backend,
)
from mergevq.errors import BackendError

_QUIET = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)


class _Tiny(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        (x,) = batch
        return self.net(x).float().pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loader():
    ds = torch.utils.data.TensorDataset(torch.randn(8, 4))
    return torch.utils.data.DataLoader(ds, batch_size=4)


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


# ------------------------------------------------------------------------------------------------
# CPU and validation
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("precision", [p for p in PRECISIONS if p != "16-mixed"])
def test_cpu_valid_precisions(precision):
    b = select_backend(accelerator="cpu", precision=precision)
    assert b.accelerator == "cpu"
    assert b.precision == ("32-true" if precision == "32" else precision)
    assert b.devices == 1
    assert b.device(0) == torch.device("cpu")
    assert b.trainer_accelerator == "cpu"
    assert b.ddp_process_group_backend == "gloo"
    assert b.precision_plugin() is None
    kw = b.trainer_kwargs()
    assert kw == {"accelerator": "cpu", "devices": 1, "num_nodes": 1, "strategy": "auto", "precision": b.precision}


def test_precision_int_from_yaml_and_case():
    assert select_backend(accelerator="CPU", precision=32).precision == "32-true"
    assert select_backend(accelerator="cpu", precision="BF16-Mixed").autocast_dtype is torch.bfloat16
    assert select_backend(accelerator="cpu", precision="32").autocast_dtype is None


def test_backend_is_frozen():
    b = select_backend(accelerator="cpu", precision="32")
    with pytest.raises(Exception):
        b.precision = "bf16-mixed"  # type: ignore[misc]


# Prefixed ids: a bare parameter id "gpu" would become a keyword that the conftest's hardware skip matches.
@pytest.mark.parametrize("bad", ["gpu", "tpu", "", "cuda:0"], ids=lambda v: f"acc{v!r}".replace("'", ""))
def test_invalid_accelerator(bad):
    with pytest.raises(BackendError) as e:
        select_backend(accelerator=bad, precision="32")
    msg = _one_line(e)
    assert repr(bad) in msg
    for choice in ("auto", "cpu", "cuda", "npu"):
        assert choice in msg


@pytest.mark.parametrize("bad", ["16", "bf16", "64-true", "fp32", 16, "16-true"])
def test_invalid_precision(bad):
    with pytest.raises(BackendError) as e:
        select_backend(accelerator="cpu", precision=bad)
    msg = _one_line(e)
    assert repr(bad) in msg
    for choice in PRECISIONS:
        assert choice in msg


def test_fp16_mixed_on_cpu_rejected():
    with pytest.raises(BackendError) as e:
        select_backend(accelerator="cpu", precision="16-mixed")
    msg = _one_line(e)
    assert "16-mixed" in msg and "bf16-mixed" in msg and "CPU" in msg


@pytest.mark.parametrize("bad", [0, -2, "two", True, 1.5])
def test_invalid_devices(bad):
    with pytest.raises(BackendError) as e:
        select_backend(accelerator="cpu", precision="32", devices=bad)
    assert "devices=" in _one_line(e)


def test_cpu_devices_are_processes():
    b = select_backend(accelerator="cpu", precision="32", devices="2")
    assert b.devices == 2
    assert b.device(1) == torch.device("cpu")
    s = make_strategy(b, strategy="auto")
    assert isinstance(s, DDPStrategy) and s.process_group_backend == "gloo"
    s = make_strategy(b, strategy="ddp_spawn")
    assert isinstance(s, DDPStrategy) and s._start_method == "spawn" and s.process_group_backend == "gloo"


def test_cuda_unavailable(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(BackendError) as e:
        select_backend(accelerator="cuda", precision="bf16-mixed")
    msg = _one_line(e)
    assert msg.startswith("accelerator=cuda requested but no CUDA device is visible")
    assert "torch.cuda.is_available() is False" in msg


def test_cuda_too_many_devices(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    with pytest.raises(BackendError) as e:
        select_backend(accelerator="cuda", precision="32", devices=2)
    msg = _one_line(e)
    assert "devices=2" in msg and "1 CUDA" in msg


def test_auto_falls_back_to_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setitem(sys.modules, "torch_npu", None)
    b = select_backend(accelerator="auto", precision="bf16-mixed")
    assert b.accelerator == "cpu" and b.precision == "bf16-mixed"


def test_npu_without_torch_npu(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_npu", None)  # import torch_npu -> ImportError
    with pytest.raises(BackendError) as e:
        select_backend(accelerator="npu", precision="bf16-mixed")
    msg = _one_line(e)
    assert "torch_npu is not installed" in msg and "pip install torch-npu" in msg


def test_configure_cuda_flags_only_on_cuda():
    assert configure_cuda_flags(Backend("cpu", "32-true")) is False
    before = (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32)
    try:
        torch.set_float32_matmul_precision("highest")
        assert configure_cuda_flags(Backend("cuda", "32-true")) is True
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(before[0])
        torch.backends.cudnn.allow_tf32 = before[1]


def test_make_strategy_errors():
    b = select_backend(accelerator="cpu", precision="32")
    with pytest.raises(BackendError) as e:
        make_strategy(b, strategy="deepspeed")
    assert "'deepspeed'" in _one_line(e) and "ddp_spawn" in str(e.value)
    with pytest.raises(BackendError) as e:
        make_strategy(b, strategy="fsdp")
    assert "cuda" in _one_line(e)
    with pytest.raises(BackendError):
        make_strategy(b, num_nodes=0)
    assert isinstance(make_strategy(b, strategy="ddp", num_nodes=2), DDPStrategy)


def test_cpu_trainer_fit_from_backend(tmp_path):
    b = select_backend(accelerator="cpu", precision="bf16-mixed")
    trainer = Trainer(**b.trainer_kwargs(), max_steps=2, default_root_dir=tmp_path, **_QUIET)
    assert isinstance(trainer.precision_plugin, MixedPrecision)
    assert trainer.precision_plugin.device == "cpu"
    trainer.fit(_Tiny(), _loader())
    assert trainer.global_step == 2


# ------------------------------------------------------------------------------------------------
# NPU wiring with a stand-in torch_npu
# ------------------------------------------------------------------------------------------------


class _FakeNPU:
    """The slice of ``torch.npu`` (installed by torch_npu) that the backend touches."""

    def __init__(self, count: int = 2) -> None:
        self.count = count
        self.current = 0
        self.set_calls: list[torch.device] = []
        self.emptied = 0
        self.amp = types.SimpleNamespace(GradScaler=_FakeScaler)

    def is_available(self) -> bool:
        return True

    def device_count(self) -> int:
        return self.count

    def set_device(self, device) -> None:
        self.set_calls.append(device)
        self.current = device.index if isinstance(device, torch.device) else int(device)

    def current_device(self) -> int:
        return self.current

    def is_bf16_supported(self) -> bool:
        return True

    def empty_cache(self) -> None:
        self.emptied += 1

    def memory_stats(self, device=None) -> dict:
        return {"allocated_bytes.all.current": 0}


class _FakeScaler:
    pass


@pytest.fixture
def fake_npu(monkeypatch):
    fake = _FakeNPU()
    mod = types.ModuleType("torch_npu")
    mod.__spec__ = importlib.machinery.ModuleSpec("torch_npu", None)
    mod.npu = fake
    monkeypatch.setitem(sys.modules, "torch_npu", mod)
    monkeypatch.setattr(torch, "npu", fake, raising=False)
    had_npu = "npu" in AcceleratorRegistry
    yield fake
    if not had_npu and "npu" in AcceleratorRegistry:
        AcceleratorRegistry.remove("npu")


def _npu_type() -> str:
    # Without a real torch_npu, torch's privateuse1 backend keeps its default name; the rename to
    # "npu" is irreversible, so it is tested in a subprocess (test_npu_device_type_rename_subprocess).
    return torch._C._get_privateuse1_backend_name()


def test_npu_selection_and_registration(fake_npu):
    b = select_backend(accelerator="npu", precision="bf16-mixed")
    assert b == Backend("npu", "bf16-mixed", 2)
    assert b.ddp_process_group_backend == "hccl"
    assert "npu" in AcceleratorRegistry
    assert AcceleratorRegistry["npu"]["accelerator"] is NPUAccelerator
    assert isinstance(AcceleratorRegistry.get("npu"), NPUAccelerator)
    # idempotent: a second selection does not raise "already present in the registry"
    assert select_backend(accelerator="npu", precision="32", devices=1).devices == 1
    assert isinstance(b.trainer_accelerator, NPUAccelerator)
    assert b.device(1) == torch.device(_npu_type(), 1)
    with pytest.raises(BackendError):
        b.device(2)


def test_npu_accelerator_api(fake_npu):
    acc = NPUAccelerator()
    assert NPUAccelerator.name() == "npu"
    assert NPUAccelerator.is_available()
    assert NPUAccelerator.auto_device_count() == 2
    assert NPUAccelerator.parse_devices(2) == [0, 1]
    assert NPUAccelerator.parse_devices("1") == [0]
    assert NPUAccelerator.parse_devices("0,1") == [0, 1]
    assert NPUAccelerator.parse_devices(-1) == [0, 1]
    with pytest.raises(BackendError):
        NPUAccelerator.parse_devices(3)
    devs = NPUAccelerator.get_parallel_devices([0, 1])
    assert devs == [torch.device(_npu_type(), 0), torch.device(_npu_type(), 1)]
    acc.setup_device(devs[1])
    assert fake_npu.set_calls == [devs[1]] and fake_npu.current_device() == 1
    with pytest.raises(BackendError):
        acc.setup_device(torch.device("cpu"))
    assert acc.get_device_stats(devs[0]) == {"allocated_bytes.all.current": 0}
    acc.teardown()
    assert fake_npu.emptied == 1


def test_npu_not_available_or_too_many(fake_npu, monkeypatch):
    with pytest.raises(BackendError) as e:
        select_backend(accelerator="npu", precision="32", devices=3)
    assert "devices=3" in _one_line(e) and "2 NPU" in str(e.value)
    monkeypatch.setattr(fake_npu, "is_available", lambda: False)
    with pytest.raises(BackendError) as e:
        select_backend(accelerator="npu", precision="32")
    assert "torch.npu.is_available() is False" in _one_line(e)


def test_npu_auto_selection(fake_npu, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select_backend(accelerator="auto", precision="bf16-mixed").accelerator == "npu"


def test_npu_precision_plugin(fake_npu):
    b = select_backend(accelerator="npu", precision="bf16-mixed", devices=1)
    plugin = b.precision_plugin()
    # Lightning's own string path would autocast on "cuda" for a custom accelerator.
    assert isinstance(plugin, MixedPrecision) and plugin.device == b.device_type
    kw = b.trainer_kwargs()
    assert "precision" not in kw
    assert len(kw["plugins"]) == 1 and isinstance(kw["plugins"][0], MixedPrecision)
    fp16 = Backend("npu", "16-mixed", 1).precision_plugin()
    assert isinstance(fp16.scaler, _FakeScaler)  # torch_npu's own GradScaler
    assert Backend("npu", "bf16-true", 1).precision_plugin() is None
    assert Backend("npu", "32-true", 1).trainer_kwargs()["precision"] == "32-true"


def test_npu_trainer_construction(fake_npu, tmp_path):
    """Trainer(...) is built from the backend with the stand-in. fit() is not run: moving a model to
    a privateuse1 device needs the real torch_npu kernels, which CPU torch lacks."""
    b = select_backend(accelerator="npu", precision="bf16-mixed", devices=1)
    trainer = Trainer(**b.trainer_kwargs(), max_steps=1, default_root_dir=tmp_path, **_QUIET)
    assert isinstance(trainer.accelerator, NPUAccelerator)
    assert isinstance(trainer.strategy, SingleDeviceStrategy)
    assert trainer.strategy.root_device == torch.device(_npu_type(), 0)
    assert isinstance(trainer.precision_plugin, MixedPrecision)
    assert trainer.precision_plugin.device == _npu_type()

    b2 = select_backend(accelerator="npu", precision="32", devices=2)
    trainer = Trainer(**b2.trainer_kwargs(strategy="ddp"), max_steps=1, default_root_dir=tmp_path, **_QUIET)
    assert isinstance(trainer.strategy, DDPStrategy)
    assert trainer.strategy.process_group_backend == "hccl"
    assert trainer.strategy.parallel_devices == NPUAccelerator.get_parallel_devices([0, 1])
    assert trainer.num_devices == 2

    # By registered name, once select_backend(accelerator="npu") has registered it.
    trainer = Trainer(
        accelerator="npu", devices=1, strategy=make_strategy(b), max_steps=1, default_root_dir=tmp_path, **_QUIET
    )
    assert isinstance(trainer.accelerator, NPUAccelerator)


_RENAME_SCRIPT = textwrap.dedent(
    """
    import json, sys, types, importlib.machinery
    import torch
    import mergevq
    from lightning.pytorch import Trainer
    from mergevq.backend import NPUAccelerator, select_backend

    class FakeNPU:
        def is_available(self): return True
        def device_count(self): return 2
        def set_device(self, d): pass
        def current_device(self): return 0

    # What the real torch_npu does on import: name privateuse1 "npu" and install torch.npu.
    torch.utils.rename_privateuse1_backend("npu")
    mod = types.ModuleType("torch_npu")
    mod.__spec__ = importlib.machinery.ModuleSpec("torch_npu", None)
    sys.modules["torch_npu"] = mod
    torch.npu = FakeNPU()

    b = select_backend(accelerator="npu", precision="bf16-mixed")
    t = Trainer(**b.trainer_kwargs(strategy="ddp"), logger=False, enable_checkpointing=False,
                enable_progress_bar=False, max_steps=1)
    t1 = Trainer(**select_backend(accelerator="npu", precision="bf16-mixed", devices=1).trainer_kwargs(),
                 logger=False, enable_checkpointing=False, enable_progress_bar=False, max_steps=1)
    print("RESULT " + json.dumps({
        "device_type": b.device_type,
        "device1": str(b.device(1)),
        "parallel": [str(d) for d in NPUAccelerator.get_parallel_devices([0, 1])],
        "ddp_devices": [str(d) for d in t.strategy.parallel_devices],
        "pg": t.strategy.process_group_backend,
        "root1": str(t1.strategy.root_device),
        "autocast_device": t1.precision_plugin.device,
    }))
    """
)


def test_npu_device_type_rename_subprocess():
    proc = subprocess.run(
        [sys.executable, "-c", _RENAME_SCRIPT], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    r = json.loads(line[len("RESULT "):])
    assert r == {
        "device_type": "npu",
        "device1": "npu:1",
        "parallel": ["npu:0", "npu:1"],
        "ddp_devices": ["npu:0", "npu:1"],
        "pg": "hccl",
        "root1": "npu:0",
        "autocast_device": "npu",
    }


# ------------------------------------------------------------------------------------------------
# Real hardware (skipped without it)
# ------------------------------------------------------------------------------------------------


@pytest.mark.gpu
def test_cuda_fit(tmp_path):
    b = select_backend(accelerator="cuda", precision="bf16-mixed", devices=1)
    assert b.device(0).type == "cuda"
    trainer = Trainer(**b.trainer_kwargs(), max_steps=2, default_root_dir=tmp_path, **_QUIET)
    trainer.fit(_Tiny(), _loader())
    assert trainer.global_step == 2


@pytest.mark.npu
def test_npu_fit(tmp_path):
    b = select_backend(accelerator="npu", precision="bf16-mixed", devices=1)
    assert b.device(0).type == "npu"
    trainer = Trainer(**b.trainer_kwargs(), max_steps=2, default_root_dir=tmp_path, **_QUIET)
    trainer.fit(_Tiny(), _loader())
    assert trainer.global_step == 2


def test_inference_commands_refuse_bf16_true_and_autocast_bf16_mixed():
    """Inference loads fp32 weights and autocasts: bf16-true would silently run fp32 there."""
    with pytest.raises(BackendError, match=r"bf16-true.*mergevq sample.*bf16-mixed"):
        Backend("cpu", "bf16-true", 1).inference_autocast_dtype("mergevq sample")
    assert Backend("cpu", "bf16-mixed", 1).inference_autocast_dtype("mergevq sample") is torch.bfloat16
    assert Backend("cpu", "32-true", 1).inference_autocast_dtype("mergevq sample") is None
