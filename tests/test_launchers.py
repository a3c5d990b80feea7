"""Launchers shared by both stages (issue #13 items 3, 4): the evaluation scripts' argument handling
(any order, editable defaults), sample_{gpu,npu}.sh TOTAL_RANK, and every command of the authors'
README run (dry) through our aliases of their script names. Bash only (MERGEVQ_DRY_RUN=1)."""

from __future__ import annotations

import itertools
import stat
from pathlib import Path

import pytest
from _launchers import ROOT, dry, error, run, world

EVAL = "scripts/evaluation/evaluation_mergevq.sh"
RECON = "scripts/inference/reconstruct.sh"
SAMPLE = "scripts/evaluation/sample_gpu.sh"
TORCHRUN_1 = ["python", "-m", "torch.distributed.run", "--standalone", "--nnodes=1"]


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A working folder holding the run directories the scripts' defaults name."""
    for name in ("runs/GR_d64", "runs/mergear_GR_XL"):
        (tmp_path / name).mkdir(parents=True)
    return tmp_path


# --------------------------------------------------------------------------------------------------
# evaluation_mergevq.sh / reconstruct.sh


def test_evaluation_without_arguments_uses_the_defaults(checkout):
    argv, world_line = dry(EVAL, cwd=checkout, DEVICES_PER_NODE="8")
    assert argv == [*TORCHRUN_1, "--nproc_per_node=8", "-m", "mergevq", "evaluate-tokenizer", "runs/GR_d64"]
    assert world_line is None  # evaluation launchers print it on stderr
    result = run(EVAL, cwd=checkout, MERGEVQ_DRY_RUN="1", DEVICES_PER_NODE="8")
    assert result.stderr == f"evaluation_mergevq.sh: {world(1, 8)}\n"


def test_missing_default_run_dir_names_the_variable_to_edit(tmp_path):
    stderr = error(EVAL, cwd=tmp_path)
    assert stderr.splitlines()[0] == (
        "evaluation_mergevq.sh: error: expected RUN_DIR: the default RUN_DIR='runs/GR_d64' does not exist; edit "
        "RUN_DIR at the top of scripts/evaluation/evaluation_mergevq.sh or give a run directory, export folder or "
        "checkpoint")
    assert "RUN_DIR at the top of scripts/inference/reconstruct.sh" in error(RECON, cwd=tmp_path)


_EVAL_ARGS = [("runs/GR_d64",), ("144,256",), ("--folder", "/data/x"), ("--raw",), ("eval.max_images=10",),
              ("--batch-size", "4")]
_EVAL_LINE = [*TORCHRUN_1, "--nproc_per_node=2", "-m", "mergevq", "evaluate-tokenizer", "--num-keep", "144,256",
              "--batch-size", "4", "--folder", "/data/x", "--raw", "runs/GR_d64", "eval.max_images=10"]


@pytest.mark.parametrize("order", list(itertools.permutations(range(len(_EVAL_ARGS))))[::97])
def test_evaluation_arguments_in_any_order_give_one_command(checkout, order):
    args = [a for i in order for a in _EVAL_ARGS[i]]
    assert dry(EVAL, *args, cwd=checkout, DEVICES_PER_NODE="2")[0] == _EVAL_LINE


def test_k_list_as_option_or_bare_is_the_same(checkout):
    bare = dry(EVAL, "eval.rfid=false", "64,144", cwd=checkout, DEVICES_PER_NODE="1")[0]
    assert dry(EVAL, "--num-keep", "64,144", "eval.rfid=false", cwd=checkout, DEVICES_PER_NODE="1")[0] == bare
    assert dry(EVAL, "eval.rfid=false", "--num-keep=64,144", cwd=checkout, DEVICES_PER_NODE="1")[0] == bare
    assert "two K lists given" in error(EVAL, "64", "--num-keep", "144", cwd=checkout)
    assert "K list '0,64'" in error(EVAL, "--num-keep", "0,64", cwd=checkout)


def test_edited_defaults_and_their_overrides(checkout):
    """The variables at the top of the script become the command's defaults; an argument replaces them."""
    edited = checkout / "evaluation_mergevq.sh"
    text = (ROOT / EVAL).read_text()
    for old, new in [('K_LIST=""', 'K_LIST="256,64"'), ('DATA_ROOT=""', 'DATA_ROOT="/imagenet"'),
                     ('BATCH_SIZE=""', 'BATCH_SIZE="16"'), ('MAX_IMAGES=""', 'MAX_IMAGES="100"')]:
        assert old in text
        text = text.replace(old, new)
    edited.write_text(text.replace('source "$(dirname "${BASH_SOURCE[0]}")/../_launch_lib.sh"',
                                   f'source "{ROOT}/scripts/_launch_lib.sh"'))
    tail = ["runs/GR_d64", "data.params.validation.params.root=/imagenet", "eval.batch_size=16", "eval.max_images=100"]
    argv = dry(edited, cwd=checkout, DEVICES_PER_NODE="1")[0]
    assert argv[argv.index("evaluate-tokenizer") + 1:] == ["--num-keep", "256,64", *tail]
    argv = dry(edited, "144", "eval.batch_size=8", cwd=checkout, DEVICES_PER_NODE="1")[0]
    assert argv[argv.index("evaluate-tokenizer") + 1:] == ["--num-keep", "144", *tail, "eval.batch_size=8"]
    argv = dry(edited, "--folder", "/photos", cwd=checkout, DEVICES_PER_NODE="1")[0]  # no ImageNet root then
    assert argv[argv.index("evaluate-tokenizer") + 1:] == ["--num-keep", "256,64", "--folder", "/photos",
                                                           "runs/GR_d64", "eval.batch_size=16", "eval.max_images=100"]


def test_reconstruct_defaults_and_positional_out_dir(checkout):
    argv = dry(RECON, cwd=checkout, DEVICES_PER_NODE="1")[0]
    assert argv[argv.index("reconstruct"):] == ["reconstruct", "--out", "visualize", "runs/GR_d64",
                                                "eval.max_images=50"]
    for args in (("runs/GR_d64", "recon", "64"), ("64", "--out", "recon", "runs/GR_d64"),
                 ("--num-keep", "64", "runs/GR_d64", "recon")):
        argv = dry(RECON, *args, cwd=checkout, DEVICES_PER_NODE="1")[0]
        assert argv[argv.index("reconstruct"):] == ["reconstruct", "--out", "recon", "--num-keep", "64",
                                                    "runs/GR_d64", "eval.max_images=50"]


# --------------------------------------------------------------------------------------------------
# sample_{gpu,npu}.sh TOTAL_RANK

_RECIPE = ["--ar", "runs/mergear_GR_XL", "--tokenizer", "runs/GR_d64", "--out", "samples/mergear_GR_XL",
           "--per-class", "50", "--batch-size", "50", "--seed", "42", "--cfg-scale", "1.75,1.85",
           "--temperature", "1.1,1.0", "--top-k", "0,0", "--top-p", "1.0,1.0"]


def test_total_rank_on_one_node(checkout):
    argv = dry(SAMPLE, "4", cwd=checkout, DEVICES_PER_NODE="8")[0]
    assert argv == [*TORCHRUN_1, "--nproc_per_node=4", "-m", "mergevq", "sample", "--accelerator", "cuda", *_RECIPE]
    # an option after TOTAL_RANK replaces its default
    argv = dry(SAMPLE, "8", "--cfg-scale", "1.9,1.9", cwd=checkout, CUDA_VISIBLE_DEVICES="0,1,2,3,4,5,6,7")[0]
    recipe = [a for a in _RECIPE if a not in ("--cfg-scale", "1.75,1.85")]
    assert argv == [*TORCHRUN_1, "--nproc_per_node=8", "-m", "mergevq", "sample", "--accelerator", "cuda", *recipe,
                    "--cfg-scale", "1.9,1.9"]


def test_total_rank_across_nodes_and_on_npus(checkout):
    argv = dry("scripts/evaluation/sample_npu.sh", "16", cwd=checkout, ASCEND_RT_VISIBLE_DEVICES="0,1,2,3,4,5,6,7",
               NODE_RANK="1", MASTER_ADDR="10.0.0.1", MASTER_PORT="29500")[0]
    assert argv == ["python", "-m", "torch.distributed.run", "--nnodes=2", "--node_rank=1", "--master_addr=10.0.0.1",
                    "--master_port=29500", "--nproc_per_node=8", "-m", "mergevq", "sample", "--accelerator", "npu",
                    *_RECIPE]
    assert "TOTAL_RANK 12 is not a whole number of nodes" in error(SAMPLE, "12", cwd=checkout, DEVICES_PER_NODE="8")
    assert "TOTAL_RANK 16 is 2 nodes of 8" in error(SAMPLE, "16", cwd=checkout, DEVICES_PER_NODE="8")
    assert "NNODES=3 but TOTAL_RANK 16" in error(SAMPLE, "16", cwd=checkout, DEVICES_PER_NODE="8", NNODES="3")


def test_total_rank_with_missing_default_names_the_variable(tmp_path):
    assert error(SAMPLE, "8", cwd=tmp_path, DEVICES_PER_NODE="8") == (
        "sample_gpu.sh: error: AR 'runs/mergear_GR_XL' does not exist: edit AR at the top of "
        "scripts/evaluation/sample_gpu.sh or give --ar\n")


# --------------------------------------------------------------------------------------------------
# the authors' names and README commands

_ALIASES = {
    "scripts/train_autogressive/run.sh": "train_autoregressive/run.sh",
    "scripts/train_autogressive/extract_codes.sh": "train_autoregressive/extract_codes.sh",
    "scripts/train_tokenizer/run_256_R_d64_single.sh": "run_256_R_single.sh",
    "scripts/train_tokenizer/run_256_R_d64_multi.sh": "run_256_R_multi.sh",
    "scripts/evaluation/evaluation_256.sh": "evaluation_mergevq.sh",
    "scripts/inference/generate.sh": "sample_gpu.sh",
}


@pytest.mark.parametrize("alias", sorted(_ALIASES))
def test_aliases_are_thin(alias):
    path = ROOT / alias
    assert path.stat().st_mode & stat.S_IXUSR
    lines = path.read_text().splitlines()
    code = [line for line in lines if line.strip() and not line.startswith("#")]
    assert code[0].startswith("exec ") and _ALIASES[alias] in code[0] and len(code) <= 3, code
    assert "alias of" in "\n".join(lines[:3])


_CFG = {"tokenizer": ROOT / "configs" / "tokenizer", "ar": ROOT / "configs" / "ar"}
_MULTI = ["python", "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=8", "--node_rank=1",
          "--master_addr=10.0.0.1", "--master_port=29500", "-m", "mergevq", "train"]
_SINGLE = [*TORCHRUN_1, "--nproc_per_node=8", "-m", "mergevq", "train"]
_TAIL = ["trainer.num_nodes=2", "trainer.devices=8", "--resume", "auto"]
_TAIL1 = ["trainer.num_nodes=1", "trainer.devices=8", "--resume", "auto"]
_POS = ("10.0.0.1", "29500", "1")
# every command of the authors' README (MASTER_ADDR MASTER_PORT NODE_RANK = 10.0.0.1 29500 1 on node 1
# of 2, 8 GPUs per node) -> the exact line it runs here
_README = [
    ("scripts/train_tokenizer/run_256_GR_d64_multi.sh", _POS, [*_MULTI, str(_CFG["tokenizer"] / "GR_d64.yaml"), *_TAIL]),
    ("scripts/train_tokenizer/run_256_GR_d64_single.sh", (), [*_SINGLE, str(_CFG["tokenizer"] / "GR_d64.yaml"), *_TAIL1]),
    ("scripts/train_tokenizer/run_256_GR_d96_multi.sh", _POS, [*_MULTI, str(_CFG["tokenizer"] / "GR_d96.yaml"), *_TAIL]),
    ("scripts/train_tokenizer/run_256_GR_d96_single.sh", (), [*_SINGLE, str(_CFG["tokenizer"] / "GR_d96.yaml"), *_TAIL1]),
    ("scripts/train_tokenizer/run_256_G_d64_multi.sh", _POS, [*_MULTI, str(_CFG["tokenizer"] / "G_d64.yaml"), *_TAIL]),
    ("scripts/train_tokenizer/run_256_G_d64_single.sh", (), [*_SINGLE, str(_CFG["tokenizer"] / "G_d64.yaml"), *_TAIL1]),
    ("scripts/train_tokenizer/run_256_R_d64_single.sh", (), [*_SINGLE, str(_CFG["tokenizer"] / "R.yaml"), *_TAIL1]),
    ("scripts/train_autogressive/run.sh", _POS, [*_MULTI, str(_CFG["ar"] / "GR_L.yaml"), *_TAIL]),
    ("scripts/evaluation/evaluation_mergevq.sh", (),
     [*TORCHRUN_1, "--nproc_per_node=8", "-m", "mergevq", "evaluate-tokenizer", "runs/GR_d64"]),
    ("scripts/evaluation/sample_gpu.sh", ("8",),
     [*TORCHRUN_1, "--nproc_per_node=8", "-m", "mergevq", "sample", "--accelerator", "cuda", *_RECIPE]),
    ("scripts/evaluation/sample_npu.sh", ("8",),
     [*TORCHRUN_1, "--nproc_per_node=8", "-m", "mergevq", "sample", "--accelerator", "npu", *_RECIPE]),
]


@pytest.mark.parametrize(("script", "args", "expected"), _README, ids=[f"{s.split('/')[-1]}" for s, _, _ in _README])
def test_authors_readme_commands(checkout, script, args, expected):
    env = {"DEVICES_PER_NODE": "8"}
    if args == _POS:
        env["NNODES"] = "2"
    argv, world_line = dry(script, *args, cwd=checkout, **env)
    assert argv == expected
    if "train" in argv:
        assert world_line == world(2 if args == _POS else 1, 8)


def test_generate_alias_runs_one_process_of_the_visualisation_recipe(checkout):
    argv = dry("scripts/inference/generate.sh", cwd=checkout, CUDA_VISIBLE_DEVICES="0,1")[0]
    assert argv[:6] == [*TORCHRUN_1, "--nproc_per_node=1"]
    sample = argv[argv.index("sample") + 1:]
    assert sample[-14:] == ["--classes", "207", "--batch-size", "8", "--temperature", "1.0,1.0", "--top-k", "0,0",
                            "--top-p", "0.96,0.96", "--cfg-scale", "4.0,4.0", "--out", "visualize"]
    assert sample[:8] == ["--accelerator", "cuda", "--ar", "runs/mergear_GR_XL", "--tokenizer", "runs/GR_d64",
                          "--seed", "42"]


def test_value_options_are_listed_once():
    """The options that take a value live in one list (scripts/_launch_lib.sh), the one of README."""
    lib = (ROOT / "scripts" / "_launch_lib.sh").read_text()
    assert lib.count("VALUE_OPTIONS=(") == 1
    for path in (ROOT / "scripts").rglob("*.sh"):
        if path.name != "_launch_lib.sh":
            assert "--group-scale)" not in path.read_text() and "VALUE_OPTIONS=" not in path.read_text(), path
