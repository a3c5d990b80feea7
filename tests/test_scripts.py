"""The Stage 1 launch scripts (scripts/train_tokenizer/, issue 4 item 6).

(a) Every ``run_256_<VARIANT>_{single,multi}.sh`` exists, is executable and is a thin wrapper around
    the one shared launcher ``_launch.sh``; with ``MERGEVQ_DRY_RUN=1`` it prints the torchrun / srun
    line it would exec, which is checked field by field; wrong or missing positional arguments exit 2
    with a usage message.
(b) The distributed test: the multi-node path started as 2 nodes x 1 CPU process on localhost
    (gloo), the real ``run_256_GR_d64_multi.sh`` with ``MERGEVQ_EXTRA_CONFIG`` swapping in a tiny
    model and a tiny ImageNet-layout folder.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from _launchers import LAUNCH_ENV, dry, error, world
from _launchers import env as _env_clean
from _launchers import run as _run_clean

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts" / "train_tokenizer"
LAUNCHER = SCRIPTS / "_launch.sh"
VARIANTS = ("G_d32", "G_d64", "GR_d32", "GR_d64", "GR_d96", "R")
MODES = ("single", "multi")
ALL = [(v, m) for v in VARIANTS for m in MODES]
# the authors' script names that are aliases of ours
ALIASES = {"run_256_R_d64_single.sh": "run_256_R_single.sh", "run_256_R_d64_multi.sh": "run_256_R_multi.sh"}
_LAUNCH_ENV = LAUNCH_ENV


def _script(variant: str, mode: str) -> Path:
    return SCRIPTS / f"run_256_{variant}_{mode}.sh"


def _env(**values: str) -> dict[str, str]:
    return _env_clean(**values)


def _run(script: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return _run_clean(script, *args, **env)


def _dry(script: Path, *args: str, **env: str) -> list[str]:
    """The launch line; the world-size line that follows it must match the line's own counts."""
    argv, world_line = dry(script, *args, **env)
    flags = _flags(argv)
    if argv[0] == "srun":
        nodes, devices = int(flags["nodes"]), int(flags["ntasks-per-node"])
    else:
        nodes, devices = int(flags["nnodes"]), int(flags["nproc_per_node"])
    assert world_line == world(nodes, devices)
    return argv


def _train_part(argv: list[str]) -> list[str]:
    """Everything after ``-m mergevq train``, less the ``--resume auto`` that every launch ends with
    (a requeued job continues its run) unless the user's arguments chose --resume or --overwrite."""
    for i in range(len(argv) - 2):
        if argv[i : i + 3] == ["-m", "mergevq", "train"]:
            rest = argv[i + 3 :]
            if "--overwrite" in rest or "--resume" in rest[:-2]:
                return rest
            assert rest[-2:] == ["--resume", "auto"], rest
            return rest[:-2]
    raise AssertionError(f"no '-m mergevq train' in {argv}")


def _flags(argv: list[str]) -> dict[str, str]:
    return dict(a[2:].split("=", 1) for a in argv if a.startswith("--") and "=" in a)


# --------------------------------------------------------------------------------------------------
# (a) layout and dry runs


@pytest.mark.parametrize(("variant", "mode"), ALL, ids=[f"{v}_{m}" for v, m in ALL])
def test_script_is_thin_executable_wrapper(variant, mode):
    path = _script(variant, mode)
    assert path.is_file(), path
    assert path.stat().st_mode & stat.S_IXUSR, f"{path} is not executable"
    code = [
        line for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")
    ]
    assert len(code) <= 3, f"{path.name} should only call the shared launcher:\n" + "\n".join(code)
    assert any("_launch.sh" in line and line.lstrip().startswith("exec") for line in code)
    assert (ROOT / "configs" / "tokenizer" / f"{variant}.yaml").is_file()
    assert LAUNCHER.stat().st_mode & stat.S_IXUSR


def test_no_other_scripts_in_folder():
    expected = {f"run_256_{v}_{m}.sh" for v, m in ALL} | {"_launch.sh"} | set(ALIASES)
    assert {p.name for p in SCRIPTS.glob("*.sh")} == expected


@pytest.mark.parametrize("variant", VARIANTS)
def test_multi_dry_run_line(variant):
    argv = _dry(
        _script(variant, "multi"), "10.1.2.3", "29511", "2", "trainer.max_epochs=3",
        "--run-dir", "/tmp/runs/x", "model.params.lr_drop_epochs=[1, 2]",
        NNODES="4", DEVICES_PER_NODE="8", MERGEVQ_PYTHON="/opt/py/bin/python3",
    )
    assert argv == [
        "/opt/py/bin/python3", "-m", "torch.distributed.run",  # = torchrun
        "--nnodes=4", "--nproc_per_node=8", "--node_rank=2", "--master_addr=10.1.2.3", "--master_port=29511",
        "-m", "mergevq", "train", str(ROOT / "configs" / "tokenizer" / f"{variant}.yaml"),
        "trainer.num_nodes=4", "trainer.devices=8",
        "trainer.max_epochs=3",  # the user's arguments come last, unchanged and in order
        "--run-dir", "/tmp/runs/x", "model.params.lr_drop_epochs=[1, 2]",
        "--resume", "auto",
    ]


def test_multi_without_nnodes_is_a_one_line_error():
    """The authors' form alone used to start a one-node job on every node: NNODES is required."""
    message = error(_script("GR_d64", "multi"), "10.0.0.1", "29500", "1", DEVICES_PER_NODE="8")
    assert message.splitlines() == [
        "run_256_GR_d64_multi.sh: error: NNODES is not set: set NNODES to the number of nodes (the same on "
        "every node), e.g. NNODES=2 run_256_GR_d64_multi.sh 10.0.0.1 29500 1"]


def test_multi_one_node_counts_local_devices():
    argv = _dry(_script("GR_d64", "multi"), "host-a", "29500", "0", NNODES="1", CUDA_VISIBLE_DEVICES="0,1,2")
    assert argv[0] == "python"
    assert _flags(argv)["nnodes"] == "1" and _flags(argv)["nproc_per_node"] == "3"
    assert _train_part(argv)[1:] == ["trainer.num_nodes=1", "trainer.devices=3"]


@pytest.mark.parametrize(
    "args",
    [(), ("10.0.0.1",), ("10.0.0.1", "29500"), ("trainer.devices=2",),
     ("10.0.0.1", "port", "0"), ("10.0.0.1", "29500", "-1"), ("10.0.0.1", "70000", "0"),
     ("10.0.0.1", "29500", "trainer.devices=2")],
    ids=["none", "addr", "addr_port", "override", "bad_port", "neg_rank", "port_range", "rank_kv"],
)
def test_multi_bad_positional_args_exit_2_with_usage(args):
    result = _run(_script("GR_d64", "multi"), *args, MERGEVQ_DRY_RUN="1", NNODES="2")
    assert result.returncode == 2
    assert "usage: run_256_GR_d64_multi.sh MASTER_ADDR MASTER_PORT NODE_RANK" in result.stderr
    assert result.stdout == ""


def test_multi_node_rank_must_be_below_nnodes():
    message = error(_script("G_d32", "multi"), "h", "29500", "2", NNODES="2")
    assert message == "run_256_G_d32_multi.sh: error: NODE_RANK 2 is out of range for NNODES=2 (0..1)\n"


@pytest.mark.parametrize(
    ("env", "message"),
    [({"NNODES": "0"}, "NNODES '0' is not a positive integer"),
     ({"NNODES": "1", "DEVICES_PER_NODE": "x"}, "DEVICES_PER_NODE 'x' is not a positive integer")],
)
def test_bad_counts_exit_2(env, message):
    assert message in error(_script("R", "multi"), "h", "29500", "0", **env)


def test_single_refuses_nnodes_above_one():
    assert "use the _multi launcher" in error(_script("R", "single"), NNODES="2")


def test_help_exits_0():
    result = _run(_script("GR_d64", "multi"), "--help")
    assert result.returncode == 0 and result.stdout.startswith("usage:")


@pytest.mark.parametrize("variant", VARIANTS)
def test_single_dry_run_line(variant):
    argv = _dry(_script(variant, "single"), "trainer.precision=16-mixed", DEVICES_PER_NODE="4")
    assert argv == [
        "python", "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=4",
        "-m", "mergevq", "train", str(ROOT / "configs" / "tokenizer" / f"{variant}.yaml"),
        "trainer.num_nodes=1", "trainer.devices=4", "trainer.precision=16-mixed", "--resume", "auto",
    ]


def test_devices_flag_sets_the_process_count():
    argv = _dry(_script("R", "single"), "--devices", "2", CUDA_VISIBLE_DEVICES="0,1,2,3")
    assert _flags(argv)["nproc_per_node"] == "2"
    assert _train_part(argv)[1:] == ["trainer.num_nodes=1", "trainer.devices=2", "--devices", "2"]
    assert "DEVICES_PER_NODE=4 but --devices 2" in error(_script("R", "single"), "--devices=2", DEVICES_PER_NODE="4")


def _fake_tools(tmp_path: Path, nvidia: str | None, npu: str | None) -> str:
    """A PATH whose first entry holds stand-in nvidia-smi / npu-smi (failing ones when None)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, output in (("nvidia-smi", nvidia), ("npu-smi", npu)):
        body = f"cat <<'EOF'\n{output}\nEOF\n" if output is not None else "exit 9\n"
        tool = bin_dir / name
        tool.write_text("#!/usr/bin/env bash\n" + body)
        tool.chmod(0o755)
    return f"{bin_dir}{os.pathsep}{os.environ['PATH']}"


_NVIDIA_L = "\n".join(f"GPU {i}: NVIDIA A100-SXM4-80GB (UUID: GPU-{i})" for i in range(6))
_NPU_L = "        Total Count                    : 8\n\n        NPU ID : 0\n        Product Name : Ascend"


@pytest.mark.parametrize(
    ("nvidia", "npu", "env", "expected"),
    [
        (_NVIDIA_L, None, {}, "6"),
        (None, _NPU_L, {}, "8"),
        (None, None, {}, "1"),
        (_NVIDIA_L, None, {"CUDA_VISIBLE_DEVICES": "1,3"}, "2"),
        (None, _NPU_L, {"ASCEND_RT_VISIBLE_DEVICES": "0,1,2"}, "3"),
        (_NVIDIA_L, None, {"DEVICES_PER_NODE": "5"}, "5"),
        (_NVIDIA_L, _NPU_L, {"MERGEVQ_ACCELERATOR": "npu"}, "8"),
        (_NVIDIA_L, _NPU_L, {"MERGEVQ_ACCELERATOR": "npu", "CUDA_VISIBLE_DEVICES": "0"}, "8"),
    ],
    ids=["nvidia-smi", "npu-smi", "nothing", "cuda_visible", "ascend_visible", "explicit", "npu", "npu_not_cuda"],
)
def test_single_counts_local_devices(tmp_path, nvidia, npu, env, expected):
    argv = _dry(_script("GR_d64", "single"), PATH=_fake_tools(tmp_path, nvidia, npu), **env)
    assert _flags(argv)["nproc_per_node"] == expected
    assert f"trainer.devices={expected}" in _train_part(argv)


def test_extra_config_follows_variant_config():
    argv = _dry(
        _script("GR_d96", "single"), "a.b=1", DEVICES_PER_NODE="1",
        MERGEVQ_EXTRA_CONFIG="configs/trainer/npu8_bf16.yaml  /tmp/mine.yaml",
    )
    assert _train_part(argv)[:4] == [
        str(ROOT / "configs" / "tokenizer" / "GR_d96.yaml"),
        "configs/trainer/npu8_bf16.yaml", "/tmp/mine.yaml", "trainer.num_nodes=1",
    ]


def test_npu_switch_layers_the_npu_trainer_file():
    """MERGEVQ_ACCELERATOR=npu: configs/trainer/npu8_bf16.yaml after the variant, NPUs counted from
    ASCEND_RT_VISIBLE_DEVICES (not CUDA_VISIBLE_DEVICES); the authors' multi-node form on NPUs."""
    argv = _dry(_script("GR_d64", "multi"), "10.0.0.1", "29500", "1", NNODES="2", MERGEVQ_ACCELERATOR="npu",
                ASCEND_RT_VISIBLE_DEVICES="0,1,2,3,4,5,6,7", CUDA_VISIBLE_DEVICES="0")
    assert argv == [
        "python", "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=8", "--node_rank=1",
        "--master_addr=10.0.0.1", "--master_port=29500", "-m", "mergevq", "train",
        str(ROOT / "configs" / "tokenizer" / "GR_d64.yaml"), str(ROOT / "configs" / "trainer" / "npu8_bf16.yaml"),
        "trainer.num_nodes=2", "trainer.devices=8", "--resume", "auto"]
    # a file already named in MERGEVQ_EXTRA_CONFIG is not layered twice
    argv = _dry(_script("R", "single"), MERGEVQ_ACCELERATOR="npu", DEVICES_PER_NODE="8",
                MERGEVQ_EXTRA_CONFIG="configs/trainer/npu8_bf16.yaml")
    assert _train_part(argv)[:2] == [str(ROOT / "configs" / "tokenizer" / "R.yaml"), "configs/trainer/npu8_bf16.yaml"]


@pytest.mark.parametrize("mode", MODES)
def test_slurm_uses_srun(mode):
    args = ("node001", "29400", "0") if mode == "multi" else ()
    argv = _dry(
        _script("GR_d64", mode), *args, "trainer.max_epochs=1",
        SLURM_JOB_ID="77", SLURM_JOB_NUM_NODES="3", DEVICES_PER_NODE="8",
        MERGEVQ_PYTHON="/env/bin/python",
    )
    nodes = "3" if mode == "multi" else "1"
    assert argv == [
        "srun", f"--nodes={nodes}", "--ntasks-per-node=8", "/env/bin/python", "-m", "mergevq", "train",
        str(ROOT / "configs" / "tokenizer" / "GR_d64.yaml"), f"trainer.num_nodes={nodes}", "trainer.devices=8",
        "trainer.max_epochs=1", "--resume", "auto"]


def test_slurm_multi_positional_args_optional():
    argv = _dry(_script("R", "multi"), "trainer.max_epochs=1", SLURM_JOB_ID="1", SLURM_JOB_NUM_NODES="2",
                NNODES="2", SLURM_NTASKS_PER_NODE="4")
    assert argv[:3] == ["srun", "--nodes=2", "--ntasks-per-node=4"]
    assert _train_part(argv)[-1] == "trainer.max_epochs=1"


def test_slurm_nnodes_mismatch_is_a_one_line_error():
    message = error(_script("R", "multi"), "h", "29500", "0", SLURM_JOB_ID="1", SLURM_JOB_NUM_NODES="4",
                    NNODES="2")
    assert message == ("run_256_R_multi.sh: error: NNODES=2 but SLURM_JOB_NUM_NODES=4: unset NNODES or make "
                       "them agree\n")


def test_slurm_switch_off_uses_torchrun():
    argv = _dry(_script("R", "multi"), "h", "29500", "1", SLURM_JOB_ID="1", SLURM_JOB_NUM_NODES="2",
                MERGEVQ_SLURM="0", NNODES="2", DEVICES_PER_NODE="4")
    assert argv[:4] == ["python", "-m", "torch.distributed.run", "--nnodes=2"]


# --------------------------------------------------------------------------------------------------
# (b) the distributed test: 2 nodes x 1 process, gloo, through run_256_GR_d64_multi.sh


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _photo_folder(root: Path, *, train_per_class: int = 12, val: int = 4) -> None:
    """A tiny ImageNet layout (root/train/<wnid>/*.JPEG, root/val/<wnid>/*.JPEG) of 40x40 crops of
    real photos shipped with scikit-image."""
    import numpy as np
    from PIL import Image
    from skimage import data as photos

    images = [photos.astronaut(), photos.chelsea(), photos.coffee(), photos.rocket()]
    rng = np.random.default_rng(0)

    def crops(folder: Path, count: int) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image = images[i % len(images)]
            y = int(rng.integers(0, image.shape[0] - 120))
            x = int(rng.integers(0, image.shape[1] - 120))
            crop = Image.fromarray(image[y : y + 120, x : x + 120]).resize((40, 40))
            crop.save(folder / f"img{i:03d}.JPEG", format="JPEG", quality=95)

    crops(root / "train" / "n00000001", train_per_class)
    crops(root / "train" / "n00000002", train_per_class)
    crops(root / "val" / "n00000001", val)


MAX_STEPS = 4
CKPT_EVERY = 2

# Layered after configs/tokenizer/GR_d64.yaml through MERGEVQ_EXTRA_CONFIG: the tiny model, a tiny
# discriminator, a random LPIPS backbone, no teacher, the tiny image folder, 4 steps on CPU (gloo).
_TINY_RUN = """\
run: {{name: ddp_test, seed: 0}}
trainer:
  accelerator: cpu
  precision: "32"
  strategy: ddp
  max_steps: {max_steps}
  max_epochs: 1
  log_every_n_steps: 1
  checkpoint_every_n_steps: {ckpt_every}
  limit_val_batches: 1
  progress_bar: false
  global_batch_size: null
data:
  params:
    batch_size: 2
    num_workers: 0
    train: {{params: {{root: {root}, size: 32, views: false}}}}
    validation: {{params: {{root: {root}, size: 32}}}}
model:
  params:
    tokenizer: {{params: {{preset: tiny-GR}}}}
    discriminator: {{params: {{ndf: 8, n_layers: 2}}}}
    teacher: null
    encoder_init: null
    perceptual: {{net: alex, weights_path: null, random_init: true}}
    accumulate_grad_batches: 1
"""


def _train_cli_available() -> bool:
    result = subprocess.run(
        [sys.executable, "-m", "mergevq", "train", "--help"], capture_output=True, text=True,
        timeout=120, cwd=ROOT,
    )
    return result.returncode == 0 and "--run-dir" in result.stdout


def _launch_two_nodes(tmp_path: Path, run_dirs: list[Path], timeout: float = 240.0):
    """Start NODE_RANK 0 and 1 of run_256_GR_d64_multi.sh; wait for both, kill both on timeout."""
    import signal

    images = tmp_path / "images"
    _photo_folder(images)
    extra = tmp_path / "tiny_run.yaml"
    extra.write_text(_TINY_RUN.format(max_steps=MAX_STEPS, ckpt_every=CKPT_EVERY, root=images))
    port = str(_free_port())
    env = _env(
        NNODES="2", DEVICES_PER_NODE="1", MERGEVQ_PYTHON=sys.executable,
        MERGEVQ_EXTRA_CONFIG=str(extra), MERGEVQ_CACHE=str(tmp_path / "cache"),
        HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1",
    )
    procs, logs = [], []
    for rank, run_dir in enumerate(run_dirs):
        log = (tmp_path / f"node{rank}.log").open("w")
        logs.append(log)
        procs.append(subprocess.Popen(
            ["bash", str(_script("GR_d64", "multi")), "127.0.0.1", port, str(rank),
             "--run-dir", str(run_dir)],
            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        ))
    try:
        for proc in procs:
            proc.wait(timeout=max(1.0, timeout))
    except subprocess.TimeoutExpired:
        pass
    finally:
        timed_out = [p.poll() is None for p in procs]
        for proc in procs:  # our own process groups: torchrun and its worker
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for log in logs:
            log.close()
    outputs = [(tmp_path / f"node{r}.log").read_text() for r in range(len(procs))]
    return [p.returncode for p in procs], timed_out, outputs


def _logged_num_keep(run_dir: Path) -> dict[int, int]:
    """step -> K from whatever the run's logger wrote (CSV or TensorBoard); rank 0 logs."""
    found: dict[int, int] = {}
    for csv_file in run_dir.rglob("*.csv"):
        import csv

        with csv_file.open() as handle:
            for row in csv.DictReader(handle):
                if row.get("train/num_keep") not in (None, ""):
                    found[int(row["step"])] = int(float(row["train/num_keep"]))
    if not found:
        event_files = list(run_dir.rglob("events.out.tfevents.*"))
        if event_files:
            from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

            for events in event_files:
                acc = EventAccumulator(str(events.parent))
                acc.Reload()
                if "train/num_keep" in acc.Tags().get("scalars", []):
                    for event in acc.Scalars("train/num_keep"):
                        found[int(event.step)] = int(event.value)
    return found


def _checkpoint_files(run_dir: Path) -> list[Path]:
    return sorted(p for p in run_dir.rglob("*") if p.is_file() and p.suffix in (".ckpt", ".pt", ".pth"))


@pytest.mark.slow
@pytest.mark.distributed
def test_multi_node_script_two_nodes_gloo(tmp_path):
    """2 nodes x 1 process on localhost through run_256_GR_d64_multi.sh (NODE_RANK 0 and 1).

    Each "node" gets its own --run-dir, as two machines without a shared disk would: everything that
    rank 0 alone must write (checkpoints, logs) has to appear under node 0's directory, and no
    checkpoint under node 1's. K: the logger (rank 0) records ``train/num_keep`` for every step and it
    must equal ``KSampler(...).sample(step)``, a pure function of (seed, step) that every rank
    evaluates with the same arguments (the resolved configs of both nodes are compared), so both ranks
    drew the same K; a rank that drew another K would also make the DDP all-reduced step diverge.
    """
    if not _train_cli_available():
        pytest.skip("`mergevq train` is not implemented yet (issue 4)")
    from mergevq import config as C
    from mergevq.tokenizer.merge import KSampler
    from mergevq.tokenizer.model import preset

    run_dirs = [tmp_path / "node0_run", tmp_path / "node1_run"]
    codes, timed_out, outputs = _launch_two_nodes(tmp_path, run_dirs)
    report = "\n".join(f"--- node {r} (exit {c}) ---\n{o[-4000:]}" for r, (c, o) in enumerate(zip(codes, outputs)))
    assert not any(timed_out), "a node did not finish within the timeout\n" + report
    assert codes == [0, 0], report

    # the resolved config is the same on both nodes (same seed, same K candidates)
    saved = [d / C.CONFIG_FILENAME for d in run_dirs if (d / C.CONFIG_FILENAME).is_file()]
    assert saved, "no resolved config.yaml in node 0's run directory\n" + report
    cfgs = [C.from_yaml(p.read_text(), source=str(p)) for p in saved]
    for cfg in cfgs[1:]:
        assert cfg.run.seed == cfgs[0].run.seed
        assert cfg.model.params.tokenizer.params == cfgs[0].model.params.tokenizer.params
    cfg = cfgs[0]
    assert cfg.trainer.num_nodes == 2 and cfg.trainer.devices == 1  # from the script's overrides

    # K: logged once per step by rank 0, equal to the deterministic draw
    logged = _logged_num_keep(run_dirs[0])
    assert 1 <= len(logged) <= MAX_STEPS, logged
    tiny = preset(cfg.model.params.tokenizer.params.preset)
    sampler = KSampler(
        candidates=tiny.k_candidates, nominal=tiny.num_keep,
        std=cfg.model.params.k_std, floor=cfg.model.params.k_floor, seed=cfg.run.seed,
    )
    steps = sorted(logged)
    assert [logged[s] for s in steps] == [sampler.sample(i) for i in range(len(steps))]

    # checkpoints: written by rank 0 only, each once, no temp files left behind
    ckpts = _checkpoint_files(run_dirs[0])
    assert ckpts, "no checkpoint written\n" + report
    assert len({p.name for p in ckpts}) == len(ckpts), ckpts
    assert len(ckpts) <= cfg.trainer.keep_checkpoints + 1, ckpts  # + an optional "last"
    assert not _checkpoint_files(run_dirs[1]), "node 1 wrote checkpoints"
    leftovers = [
        p for d in run_dirs if d.exists() for p in d.rglob("*")
        if p.is_file() and (".tmp" in p.name or p.name.endswith(".partial"))
    ]
    assert not leftovers, leftovers
