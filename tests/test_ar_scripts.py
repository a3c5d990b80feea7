"""scripts/train_autoregressive/run.sh (issue #6 item 5): the torchrun line it builds (dry runs, checked
field by field), its argument errors, and one real launch: 1 node x 2 CPU processes (gloo DDP) training
the tiny MergeAR for a few steps through the script."""

from __future__ import annotations

import os
import shlex
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from _ar_training import write_codes, write_config

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "train_autoregressive" / "run.sh"

_LAUNCH_ENV = ("NNODES", "DEVICES_PER_NODE", "MERGEVQ_PYTHON", "MERGEVQ_EXTRA_CONFIG", "MERGEVQ_DRY_RUN",
               "MASTER_ADDR", "MASTER_PORT", "SLURM_JOB_ID")


def _env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCH_ENV}
    env.update(values)
    return env


def _run(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], env=_env(**env), capture_output=True, text=True, timeout=30,
                          check=False)


def _dry(*args: str, **env: str) -> list[str]:
    result = _run(*args, MERGEVQ_DRY_RUN="1", **env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, result.stdout
    return shlex.split(lines[0])


def _split(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """(torchrun flags, everything after ``-m mergevq train`` less the final ``--resume auto`` that a
    launch adds unless the user's arguments say --resume or --overwrite)."""
    for i in range(len(argv) - 2):
        if argv[i : i + 3] == ["-m", "mergevq", "train"]:
            head = argv[:i]
            flags = dict(a[2:].split("=", 1) for a in head if a.startswith("--") and "=" in a)
            rest = argv[i + 3 :]
            if "--overwrite" not in rest and "--resume" not in rest[:-2]:
                assert rest[-2:] == ["--resume", "auto"], rest
                rest = rest[:-2]
            return flags, rest
    raise AssertionError(f"no '-m mergevq train' in {argv}")


def test_script_is_executable():
    assert SCRIPT.is_file() and SCRIPT.stat().st_mode & stat.S_IXUSR


def test_dry_run_line_with_config_name_and_user_arguments_last():
    argv = _dry("10.1.2.3", "29511", "2", "ar/G_XL", "codes.root=/data/codes", "--run-dir", "/tmp/runs/x",
                "model.params.lr=1e-4", NNODES="4", DEVICES_PER_NODE="8", MERGEVQ_PYTHON="/opt/py/bin/python3")
    assert argv[:3] == ["/opt/py/bin/python3", "-m", "torch.distributed.run"]  # = torchrun
    flags, train = _split(argv)
    assert flags == {"nnodes": "4", "nproc_per_node": "8", "node_rank": "2",
                     "master_addr": "10.1.2.3", "master_port": "29511"}
    assert train == [str(ROOT / "configs" / "ar" / "G_XL.yaml"), "trainer.num_nodes=4", "trainer.devices=8",
                     "codes.root=/data/codes", "--run-dir", "/tmp/runs/x", "model.params.lr=1e-4"]


def test_defaults_one_node_of_eight_and_mergear_L_on_GR():
    argv = _dry("host-a", "29500", "0", "codes.root=/c")
    flags, train = _split(argv)
    assert argv[0] == "python" and flags["nnodes"] == "1" and flags["nproc_per_node"] == "8"
    assert train == [str(ROOT / "configs" / "ar" / "GR_L.yaml"), "trainer.num_nodes=1", "trainer.devices=8",
                     "codes.root=/c"]


def test_config_file_path_and_extra_config(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text("run: {name: x}\n")
    argv = _dry("h", "1", "0", str(mine), MERGEVQ_EXTRA_CONFIG="configs/trainer/npu8_bf16.yaml  /tmp/o.yaml")
    _, train = _split(argv)
    assert train[:3] == [str(mine), "configs/trainer/npu8_bf16.yaml", "/tmp/o.yaml"]


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [((), {}, "expected MASTER_ADDR MASTER_PORT NODE_RANK"),
     (("10.0.0.1", "29500"), {}, "expected MASTER_ADDR"),
     (("10.0.0.1", "port", "0"), {}, "MASTER_PORT 'port'"),
     (("10.0.0.1", "70000", "0"), {}, "MASTER_PORT '70000'"),
     (("10.0.0.1", "29500", "-1"), {}, "NODE_RANK '-1'"),
     (("a=b", "29500", "0"), {}, "MASTER_ADDR 'a=b'"),
     (("h", "29500", "2"), {"NNODES": "2"}, "NODE_RANK 2 is out of range"),
     (("h", "29500", "0"), {"DEVICES_PER_NODE": "x"}, "DEVICES_PER_NODE 'x'"),
     (("h", "29500", "0", "ar/nope"), {}, "config not found: ar/nope")],
    ids=["none", "two", "bad_port", "port_range", "neg_rank", "addr_kv", "rank_range", "devices", "config"],
)
def test_bad_arguments_exit_2_with_usage(args, env, message):
    result = _run(*args, MERGEVQ_DRY_RUN="1", **env)
    assert result.returncode == 2
    assert message in result.stderr and "usage: run.sh MASTER_ADDR MASTER_PORT NODE_RANK" in result.stderr
    assert result.stdout == ""


def test_help_exits_0():
    result = _run("--help")
    assert result.returncode == 0 and result.stdout.startswith("usage:")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
@pytest.mark.distributed
def test_two_cpu_processes_train_through_the_script(tmp_path):
    """1 node x 2 gloo processes: rank 0 alone writes the checkpoints, the run reaches max_steps and
    the checkpoint holds weights every rank agreed on (DDP all-reduces the gradients)."""
    codes = write_codes(tmp_path / "codes", count=16)
    config = write_config(tmp_path, codes=codes, trainer={"max_steps": 3, "strategy": "ddp"},
                          data={"batch_size": 4}, params={"schedule": {"warmup_steps": 1}})
    run_dir = tmp_path / "run"
    env = _env(NNODES="1", DEVICES_PER_NODE="2", MERGEVQ_PYTHON=sys.executable, OMP_NUM_THREADS="1",
               MERGEVQ_CACHE=str(tmp_path / "cache"))
    result = subprocess.run(["bash", str(SCRIPT), "127.0.0.1", str(_free_port()), "0", str(config),
                             "--run-dir", str(run_dir)], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=240, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    from mergevq.training.checkpoint import list_checkpoints, load_checkpoint_file

    names = [p.name for p in list_checkpoints(run_dir / "checkpoints")]
    assert names and names[-1].startswith("step000000003"), names
    ckpt = load_checkpoint_file(run_dir / "checkpoints" / names[-1])
    assert ckpt["global_step"] == 3
    assert "trainer:\n  accelerator: cpu" in ckpt["mergevq_config"] and "devices: 2" in ckpt["mergevq_config"]
