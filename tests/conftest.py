"""Shared test setup: offline, deterministic, hardware markers skip without hardware."""

import os

# Any accidental hub access must fail in seconds, not hang (ENVIRONMENT.md).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Progress bars off in tests (tests of the bars turn them on themselves).
os.environ.setdefault("MERGEVQ_PROGRESS", "0")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# A regular install applies the torchvision CPU fix through its .pth hook; an editable install
# does not place the hook, so apply it here before any test module imports timm or lightning.
import _torchvision_compat  # noqa: E402

_torchvision_compat.apply()

import pytest  # noqa: E402
import torch  # noqa: E402


def _npu_available() -> bool:
    try:
        import torch_npu  # noqa: F401
    except ImportError:
        return False
    return bool(torch.npu.is_available())


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    skip_npu = pytest.mark.skip(reason="needs an Ascend NPU with torch_npu")
    has_gpu = torch.cuda.is_available()
    has_npu = _npu_available()
    for item in items:
        if item.get_closest_marker("gpu") and not has_gpu:
            item.add_marker(skip_gpu)
        if item.get_closest_marker("npu") and not has_npu:
            item.add_marker(skip_npu)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """A session-wide private MERGEVQ_CACHE (demo data built once, nothing written to ~/.cache)."""
    return tmp_path_factory.mktemp("mergevq_cache")


@pytest.fixture
def private_cache(cache_dir, monkeypatch):
    monkeypatch.setenv("MERGEVQ_CACHE", str(cache_dir))
    return cache_dir


@pytest.fixture
def one_thread():
    """Tiny models: one intra-op thread is faster, and far faster when other jobs share the CPU
    cores. Test modules of tiny models opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
