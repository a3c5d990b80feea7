"""benchmarks/gpu_suite.sh (issue #14 item 6) runs end to end on the CPU with ``--quick``.

No timing is asserted: the command exits 0, prints one markdown table with a row per measurement
(training step with MFU, encode / decode at three K, sampling with both caches at two batches), and
writes the JSON with the keys a later reader (README figures, a GPU session) relies on. A failing row
becomes an error row while the others still run, and the exit status is then 1.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
ROW_KEYS = {"item", "setting", "status", "error", "metrics"}

# main() in this process sets torch's thread count (1 with --quick); the fixture restores it
pytestmark = pytest.mark.usefixtures("one_thread")


def _suite(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return importlib.import_module("gpu_suite")


@pytest.mark.slow
def test_quick_cpu_run_prints_one_table_and_writes_the_json(tmp_path):
    out = tmp_path / "suite.json"
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    env.pop("OUT", None)
    done = subprocess.run(["bash", str(BENCHMARKS / "gpu_suite.sh"), "--device", "cpu", "--quick", "--json", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr

    table = [line for line in done.stdout.splitlines() if line.startswith("|")]
    assert table[0] == "| item | setting | throughput | time | MFU / cache | peak memory | status |"
    rows = table[2:]
    assert [r.split(" | ")[0].strip("| ") for r in rows] == ["train_step"] + ["encode", "decode"] * 3 + ["sample"] * 4
    assert all(r.endswith("| ok |") for r in rows)
    assert "%" in rows[0] and "img/s" in rows[1] and "tok/s" in rows[-1] and "floor" in rows[-4]
    assert sum("full cache" in r for r in rows) == 2 and sum("compressed cache" in r for r in rows) == 2

    report = json.loads(out.read_text())
    assert {"suite", "created", "command", "wall_seconds", "settings", "environment", "rows"} <= set(report)
    env_keys = {"device", "device_name", "torch", "mergevq", "peak_tflops", "peak_source", "memory_kind"}
    assert env_keys <= set(report["environment"]) and report["environment"]["device"] == "cpu"
    assert report["environment"]["peak_source"].startswith("measured")
    assert report["settings"]["quick"] is True and report["settings"]["precision"] == "bf16-mixed"
    rows = report["rows"]
    assert all(set(r) == ROW_KEYS and r["status"] == "ok" for r in rows)
    assert all(r["metrics"]["peak_memory_bytes"] > 0 for r in rows)

    train = rows[0]["metrics"]
    assert {"batch", "step_seconds", "images_per_second", "flops_per_step", "flops_generator_step",
            "flops_discriminator_step", "achieved_tflops", "mfu"} <= set(train)
    assert train["flops_per_step"] == train["flops_generator_step"] + train["flops_discriminator_step"] > 0
    assert 0 < train["mfu"] and math.isfinite(train["mfu"])
    ks = [r["metrics"]["num_keep"] for r in rows if r["item"] == "encode"]
    assert ks == [16, 9, 4]  # tiny-GR: K = L, nominal, smallest
    assert all(r["metrics"]["images_per_second"] > 0 for r in rows if r["item"] in ("encode", "decode"))
    samples = [r["metrics"] for r in rows if r["item"] == "sample"]
    assert [m["batch"] for m in samples] == [1, 1, 2, 2]
    for m in samples:
        assert {"tokens_per_second", "step_ms", "cache_capacity", "mean_peak_cache_entries", "num_tokens",
                "weight_bytes", "bandwidth_bytes_per_second", "floor_step_ms"} <= set(m)
        assert 0 < m["floor_step_ms"] < m["step_ms"]
    assert "speed_vs_full" in samples[1] and "speed_vs_full" in samples[3]


def test_a_failing_row_is_an_error_row_and_the_rest_still_run(tmp_path, monkeypatch, capsys):
    suite = _suite(monkeypatch)
    real_generate = suite.generate

    def generate(model, *, compressed_cache, **kwargs):
        if compressed_cache:
            raise RuntimeError("injected failure\nsecond line")
        return real_generate(model, compressed_cache=compressed_cache, **kwargs)

    monkeypatch.setattr(suite, "generate", generate)
    out = tmp_path / "suite.json"
    code = suite.main(["--device", "cpu", "--quick", "--only", "sample", "--ar-batches", "1", "--json", str(out)])
    assert code == 1
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| sample")]
    assert len(table) == 2 and table[0].endswith("| ok |")
    assert "error: RuntimeError: injected failure |" in table[1]
    rows = json.loads(out.read_text())["rows"]
    assert [r["status"] for r in rows] == ["ok", "error"] and rows[1]["error"] == "RuntimeError: injected failure"


def test_time_limit_timeout_rows_and_default_json_path(monkeypatch, tmp_path):
    suite = _suite(monkeypatch)
    started = time.perf_counter()
    with pytest.raises(suite.RowTimeout), suite.time_limit(1):
        time.sleep(5)
    assert time.perf_counter() - started < 3
    wrapped = suite.Row("sample", "s")
    try:  # a compiler wraps the interruption in its own error: still a timeout row
        try:
            raise suite.RowTimeout("row exceeded its time limit of 1 s")
        except suite.RowTimeout as err:
            raise RuntimeError("compile failed") from err
    except RuntimeError as err:
        suite._record_failure(wrapped, err)
    assert (wrapped.status, wrapped.error) == ("timeout", "row exceeded its time limit of 1 s")
    monkeypatch.setenv("OUT", str(tmp_path))
    assert suite.default_json_path(suite.torch.device("cpu")) == tmp_path / "gpu_suite.json"
    monkeypatch.delenv("OUT")
    assert suite.default_json_path(suite.torch.device("cpu")).parent == BENCHMARKS / "results"


def test_peak_table_matches_device_names(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    flops = importlib.import_module("_flops")

    def lookup(name: str) -> float | None:
        return next((peak for pattern, peak in flops.PEAK_BF16_DENSE if re.search(pattern, name)), None)

    assert lookup("NVIDIA H200") == lookup("NVIDIA H100 80GB HBM3") == 989.4e12
    assert lookup("NVIDIA H100 PCIe") == 756.0e12 and lookup("NVIDIA A100-SXM4-80GB") == 312.0e12
    assert lookup("NVIDIA L40S") == 362.05e12 and lookup("NVIDIA L4") == 121.0e12
    assert lookup("NVIDIA A10") == 125.0e12 and lookup("NVIDIA A10G") is None
    override = flops.peak_flops(flops.torch.device("cpu"), override_tflops=100.0, matmul_size=8)
    assert override.flops == 100e12 and override.source == "--peak-tflops 100"
