"""Helpers of the launcher dry-run tests (tests/test_scripts.py, test_ar_scripts.py, test_launchers.py):
run a script under scripts/ with bash and a clean launch environment, MERGEVQ_DRY_RUN=1, and split what
it prints. Bash only: no Python process is started by a dry run."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Variables that change a launch line; every run starts without them.
LAUNCH_ENV = (
    "SLURM_JOB_ID", "SLURM_JOB_NUM_NODES", "SLURM_NNODES", "SLURM_NTASKS", "SLURM_NTASKS_PER_NODE", "NNODES",
    "NODE_RANK", "DEVICES_PER_NODE", "MERGEVQ_PYTHON", "MERGEVQ_EXTRA_CONFIG", "MERGEVQ_DRY_RUN",
    "MERGEVQ_ACCELERATOR", "MERGEVQ_SLURM", "MERGEVQ_SUBCOMMAND", "CUDA_VISIBLE_DEVICES",
    "ASCEND_RT_VISIBLE_DEVICES", "MASTER_ADDR", "MASTER_PORT",
)


def env(**values: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if k not in LAUNCH_ENV}
    clean.update(values)
    return clean


def run(script: Path | str, *args: str, cwd: Path | None = None, **values: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / script), *args], env=env(**values), capture_output=True, text=True,
                          timeout=30, check=False, cwd=cwd)


def world(nodes: int, devices: int) -> str:
    return f"world size {nodes * devices} = {nodes} x {devices} ({nodes} node(s), {devices} device(s) per node)"


def dry(script: Path | str, *args: str, cwd: Path | None = None, **values: str) -> tuple[list[str], str | None]:
    """(the launch line as argv, the world-size line a training launcher prints after it, else None)."""
    result = run(script, *args, cwd=cwd, MERGEVQ_DRY_RUN="1", **values)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) in (1, 2), result.stdout
    return shlex.split(lines[0]), (lines[1] if len(lines) == 2 else None)


def error(script: Path | str, *args: str, cwd: Path | None = None, **values: str) -> str:
    """The stderr of a launch that must fail with exit status 2 before printing any line."""
    result = run(script, *args, cwd=cwd, MERGEVQ_DRY_RUN="1", **values)
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert result.stdout == ""
    return result.stderr
