"""The MergeAR launchers scripts/train_autoregressive/run{,_single,_multi}.sh (issues #6, #13): the exact
torchrun / srun line each builds (dry runs) in single-node, multi-node, SLURM and NPU forms, their errors,
and one real launch: 1 node x 2 CPU processes (gloo DDP) training
the tiny MergeAR for a few steps through the script."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from _ar_training import write_codes, write_config
from _launchers import dry, error, world
from _launchers import env as _env
from _launchers import run as _run_script

ROOT = Path(__file__).resolve().parents[1]
FOLDER = ROOT / "scripts" / "train_autoregressive"
SCRIPT = FOLDER / "run.sh"
GR_L = str(ROOT / "configs" / "ar" / "GR_L.yaml")


def _run(*args: str, **env: str) -> subprocess.CompletedProcess:
    return _run_script(SCRIPT, *args, **env)


def _dry(*args: str, script: Path = SCRIPT, **env: str) -> list[str]:
    argv, world_line = dry(script, *args, **env)
    flags = _flags(argv)
    if argv[0] == "srun":
        assert world_line == world(int(flags["nodes"]), int(flags["ntasks-per-node"]))
    else:
        assert world_line == world(int(flags["nnodes"]), int(flags["nproc_per_node"]))
    return argv


def _flags(argv: list[str]) -> dict[str, str]:
    return dict(a[2:].split("=", 1) for a in argv if a.startswith("--") and "=" in a)


def _split(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """(torchrun flags, everything after ``-m mergevq train`` less the final ``--resume auto`` that a
    launch adds unless the user's arguments say --resume or --overwrite)."""
    for i in range(len(argv) - 2):
        if argv[i : i + 3] == ["-m", "mergevq", "train"]:
            flags = _flags(argv[:i])
            rest = argv[i + 3 :]
            if "--overwrite" not in rest and "--resume" not in rest[:-2]:
                assert rest[-2:] == ["--resume", "auto"], rest
                rest = rest[:-2]
            return flags, rest
    raise AssertionError(f"no '-m mergevq train' in {argv}")


@pytest.mark.parametrize("name", ["run.sh", "run_single.sh", "run_multi.sh"])
def test_scripts_are_executable(name):
    path = FOLDER / name
    assert path.is_file() and path.stat().st_mode & stat.S_IXUSR


def test_dry_run_line_with_config_name_and_user_arguments_last():
    argv = _dry("10.1.2.3", "29511", "2", "ar/G_XL", "codes.root=/data/codes", "--run-dir", "/tmp/runs/x",
                "model.params.lr=1e-4", NNODES="4", DEVICES_PER_NODE="8", MERGEVQ_PYTHON="/opt/py/bin/python3")
    assert argv == ["/opt/py/bin/python3", "-m", "torch.distributed.run", "--nnodes=4", "--nproc_per_node=8",
                    "--node_rank=2", "--master_addr=10.1.2.3", "--master_port=29511", "-m", "mergevq", "train",
                    str(ROOT / "configs" / "ar" / "G_XL.yaml"), "trainer.num_nodes=4", "trainer.devices=8",
                    "codes.root=/data/codes", "--run-dir", "/tmp/runs/x", "model.params.lr=1e-4", "--resume", "auto"]


@pytest.mark.parametrize("script", ["run.sh", "run_multi.sh"])
def test_multi_node_forms_are_one_launcher(script):
    """run.sh (the authors' name) and run_multi.sh build the same line; default MergeAR-L on GR tokens."""
    argv = _dry("host-a", "29500", "1", "codes.root=/c", script=FOLDER / script, NNODES="2", DEVICES_PER_NODE="8")
    assert argv == ["python", "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=8", "--node_rank=1",
                    "--master_addr=host-a", "--master_port=29500", "-m", "mergevq", "train", GR_L,
                    "trainer.num_nodes=2", "trainer.devices=8", "codes.root=/c", "--resume", "auto"]


def test_single_node_form():
    argv = _dry("ar/GR_B", "codes.root=/c", "--out", "runs/b", script=FOLDER / "run_single.sh",
                CUDA_VISIBLE_DEVICES="0,1")
    assert argv == ["python", "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2",
                    "-m", "mergevq", "train", str(ROOT / "configs" / "ar" / "GR_B.yaml"), "trainer.num_nodes=1",
                    "trainer.devices=2", "codes.root=/c", "--out", "runs/b", "--resume", "auto"]
    # --config NAME anywhere is the same choice as the positional CONFIG
    assert _dry("codes.root=/c", "--out", "runs/b", "--config", "ar/GR_B", script=FOLDER / "run_single.sh",
                CUDA_VISIBLE_DEVICES="0,1") == argv
    assert "two configs given" in error(FOLDER / "run_single.sh", "ar/GR_B", "--config", "ar/G_B")


@pytest.mark.parametrize(("script", "args"), [("run.sh", ()), ("run.sh", ("n1", "29500", "0")),
                                              ("run_multi.sh", ()), ("run_single.sh", ())])
def test_slurm_uses_srun(script, args):
    argv = _dry(*args, "codes.root=/c", script=FOLDER / script, SLURM_JOB_ID="5", SLURM_JOB_NUM_NODES="4",
                DEVICES_PER_NODE="8")
    nodes = "1" if script == "run_single.sh" else "4"
    assert argv == ["srun", f"--nodes={nodes}", "--ntasks-per-node=8", "python", "-m", "mergevq", "train", GR_L,
                    f"trainer.num_nodes={nodes}", "trainer.devices=8", "codes.root=/c", "--resume", "auto"]


def test_slurm_nnodes_mismatch_and_missing_nnodes_are_one_line_errors():
    assert error(SCRIPT, "codes.root=/c", SLURM_JOB_ID="5", SLURM_JOB_NUM_NODES="4", NNODES="3") == (
        "run.sh: error: NNODES=3 but SLURM_JOB_NUM_NODES=4: unset NNODES or make them agree\n")
    assert error(SCRIPT, "h", "29500", "0").startswith("run.sh: error: NNODES is not set: set NNODES")


def test_npu_form():
    argv = _dry("h", "29500", "0", "ar/GR_XL", "codes.root=/c", script=FOLDER / "run_multi.sh", NNODES="1",
                MERGEVQ_ACCELERATOR="npu", ASCEND_RT_VISIBLE_DEVICES="0,1,2,3")
    _, train = _split(argv)
    assert _flags(argv)["nproc_per_node"] == "4"
    assert train == [str(ROOT / "configs" / "ar" / "GR_XL.yaml"), str(ROOT / "configs" / "trainer" / "npu8_bf16.yaml"),
                     "trainer.num_nodes=1", "trainer.devices=4", "codes.root=/c"]


def test_config_file_path_and_extra_config(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text("run: {name: x}\n")
    argv = _dry("h", "1", "0", str(mine), NNODES="1",
                MERGEVQ_EXTRA_CONFIG="configs/trainer/npu8_bf16.yaml  /tmp/o.yaml")
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
     (("h", "29500", "0", "ar/nope"), {}, "config not found: ar/nope")],
    ids=["none", "two", "bad_port", "port_range", "neg_rank", "addr_kv", "config"],
)
def test_bad_arguments_exit_2_with_usage(args, env, message):
    stderr = error(SCRIPT, *args, NNODES="1", **env)
    assert message in stderr and "usage: run.sh MASTER_ADDR MASTER_PORT NODE_RANK" in stderr


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [(("h", "29500", "2"), {"NNODES": "2"}, "run.sh: error: NODE_RANK 2 is out of range for NNODES=2 (0..1)"),
     (("h", "29500", "0"), {"NNODES": "1", "DEVICES_PER_NODE": "x"},
      "run.sh: error: DEVICES_PER_NODE 'x' is not a positive integer (processes per node)")],
    ids=["rank_range", "devices"],
)
def test_environment_errors_are_one_line(args, env, message):
    assert error(SCRIPT, *args, **env).splitlines() == [message]


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
