"""``mergevq sample`` (issue 6 item 6): seeded class-conditional sampling, sharded, to PNGs + ADM npz.

Invariants: sample i's image depends only on (global seed, i) and its label, not on the batch size
(1 vs 4) or the process count (1 vs 2 gloo ranks with uneven shards); the npz holds the images in
sample order and equals the PNGs; the CLI writes the documented layout; mismatched models and bad
options are one-line errors. A tiny MergeAR and a tiny tokenizer (random weights) on the CPU.

Issue 11: an interrupted run (a real SIGKILL, an exception after some batches) resumes, with
another batch size or process count too, and ends with the npz of an uninterrupted run (byte for
byte when resumed as started); a finished folder is left alone; other settings, foreign folders
and files are refused in one line and left untouched; --overwrite replaces.
"""

from __future__ import annotations

import filecmp
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from _distributed import run_ranks
from PIL import Image

from mergevq.ar.model import MergeAR
from mergevq.ar.model import build_config as ar_config
from mergevq.ar.sampling import SamplingSettings
from mergevq.cli import main
from mergevq.distributed import DistContext
from mergevq.errors import ConfigError
from mergevq.fileio import is_temp_name
from mergevq.inference.sample import (
    NPZ_FILE,
    PARTS_DIR,
    PNG_DIR,
    RECORD_FILE,
    class_labels,
    png_name,
    sample_seeds,
    sample_to_disk,
)
from mergevq.inference.tokenizer_eval import SINGLE_PROCESS
from mergevq.tokenizer.model import MergeVQ
from mergevq.tokenizer.model import build_config as tokenizer_config

CPU = torch.device("cpu")
# CFG on and a temperature: exercises the doubled batch and the per-sample random draws
SETTINGS = SamplingSettings(cfg_scale=(2.0, 1.5), temperature=1.0, top_k=20)


@pytest.fixture(autouse=True)
def _no_progress_bars(monkeypatch):
    """stderr holds the error lines these tests read; the progress bar has its own test."""
    monkeypatch.setenv("MERGEVQ_PROGRESS", "0")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Exported tiny MergeAR (10 classes) and tiny-GR tokenizer (32 px, 4 x 4 grid: L = 16 keeps the
    step-by-step sampling cheap)."""
    root = tmp_path_factory.mktemp("sample_models")
    torch.manual_seed(0)
    tokenizer = MergeVQ(config=tokenizer_config(preset="tiny-GR")).eval()
    model = MergeAR(config=ar_config(preset="tiny", changes={"grid": (4, 4)})).eval()
    tokenizer.save_pretrained(root / "tokenizer")
    model.save_pretrained(root / "ar")
    return {"tokenizer": tokenizer, "model": model, "tokenizer_dir": root / "tokenizer", "ar_dir": root / "ar"}


def _run(models, out: Path, *, labels, batch_size: int, context=SINGLE_PROCESS, settings=SETTINGS,
         write_png: bool = True, progress=None):
    return sample_to_disk(models["model"], models["tokenizer"], labels=labels, num_keep=9, settings=settings,
                          seed=7, out_dir=out, batch_size=batch_size, device=CPU, context=context,
                          write_png=write_png, progress=progress)


class _Stop(Exception):
    pass


def _stop_after(samples: int):
    """A progress callback that interrupts the run once ``samples`` of its share are generated."""
    def callback(progress):
        if progress.done >= samples:
            raise _Stop
    return callback


def _leftovers(out: Path) -> list[str]:
    """Temporary files and unfinished-run state anywhere under ``out``."""
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if is_temp_name(p.name) or p.name == PARTS_DIR)


def _npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path / NPZ_FILE) as data:
        return data["arr_0"], data["arr_1"]


def _assert_same_samples(a: np.ndarray, b: np.ndarray) -> None:
    """The same token grids decode to the same pixels up to float rounding: the decoder's batched
    convolutions round differently for another batch shape or memory layout (the commands load the
    tokenizer channels_last), which can move a value by one grey level (measured: 0.14 % of the
    values). A different seed or sample order changes nearly every pixel."""
    assert a.shape == b.shape
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-2, (diff.max(), (diff > 0).mean())


def test_seeds_depend_on_global_seed_and_index_only():
    whole = sample_seeds(3, range(10))
    assert torch.equal(torch.cat([sample_seeds(3, range(4)), sample_seeds(3, range(4, 10))]), whole)
    assert len(set(whole.tolist())) == 10 and int(whole.min()) >= 0
    assert not set(sample_seeds(4, range(10)).tolist()) & set(whole.tolist())
    with pytest.raises(ConfigError, match="seed must be >= 0"):
        sample_seeds(-1, range(2))


def test_class_labels_are_class_major():
    assert class_labels(classes=[3, 1], per_class=2).tolist() == [3, 3, 1, 1]
    with pytest.raises(ConfigError, match="per_class"):
        class_labels(classes=[0], per_class=0)


def test_batch_size_does_not_change_samples(models, tmp_path):
    labels = class_labels(classes=[0, 4], per_class=2)
    one = _run(models, tmp_path / "b1", labels=labels, batch_size=1)
    four = _run(models, tmp_path / "b4", labels=labels, batch_size=4)
    images_1, labels_1 = _npz(tmp_path / "b1")
    images_4, labels_4 = _npz(tmp_path / "b4")
    assert images_1.shape == (4, 32, 32, 3) and images_1.dtype == np.uint8
    assert labels_1.tolist() == labels_4.tolist() == [0, 0, 4, 4]
    _assert_same_samples(images_1, images_4)
    assert len({images_1[i].tobytes() for i in range(4)}) == 4  # different seeds, different samples
    # the PNGs hold the npz's pixels, named in sample order
    names = sorted(p.name for p in (tmp_path / "b1" / PNG_DIR).iterdir())
    assert names == [png_name(i, int(label)) for i, label in enumerate(labels)]
    for i, name in enumerate(names):
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "b1" / PNG_DIR / name)), images_1[i])
    assert not (tmp_path / "b1" / ".parts").exists()
    # the cache statistics are per sample, so they too ignore the batching
    assert one.mean_peak_cache_entries == four.mean_peak_cache_entries
    assert one.mean_unique_tokens == four.mean_unique_tokens
    assert one.num_samples == 4 and one.num_tokens == 16 and one.compressed_cache


def _two_rank_worker(rank, world, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        root = Path(out_dir)
        models = {"model": MergeAR.from_pretrained(root / "models" / "ar"),
                  "tokenizer": MergeVQ.from_pretrained(root / "models" / "tokenizer").eval()}
        context = DistContext(rank=rank, world_size=world, local_rank=rank)
        _run(models, root / "ranks", labels=class_labels(classes=[2, 9, 5], per_class=1), batch_size=2,
             context=context)
        # a 1-process run interrupted after 1 sample, resumed by 2 processes (one missing sample each)
        _run(models, root / "resumed", labels=class_labels(classes=[2, 9, 5], per_class=1), batch_size=2,
             context=context)
        dist.barrier()  # all ranks done before any tears the group down (gloo aborts a rank whose peer left)
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_two_processes_equal_one(models, tmp_path):
    (tmp_path / "models").mkdir()
    for name in ("ar", "tokenizer"):
        (tmp_path / "models" / name).symlink_to(models[f"{name}_dir"])
    labels = class_labels(classes=[2, 9, 5], per_class=1)
    with pytest.raises(_Stop):
        _run(models, tmp_path / "resumed", labels=labels, batch_size=1, progress=_stop_after(1))
    run_ranks(_two_rank_worker, world=2, tmp_path=tmp_path, timeout_s=180, what="2-process sampling")
    _run(models, tmp_path / "single", labels=labels, batch_size=3)
    images_2, labels_2 = _npz(tmp_path / "ranks")
    images_1, labels_1 = _npz(tmp_path / "single")
    assert labels_2.tolist() == labels_1.tolist() == [2, 9, 5]
    _assert_same_samples(images_2, images_1)  # shards of 2 + 1 samples, reassembled in order
    assert sorted(p.name for p in (tmp_path / "ranks" / PNG_DIR).iterdir()) == \
        sorted(p.name for p in (tmp_path / "single" / PNG_DIR).iterdir())
    images_r, labels_r = _npz(tmp_path / "resumed")
    assert labels_r.tolist() == [2, 9, 5]
    _assert_same_samples(images_r, images_1)
    record = json.loads((tmp_path / "resumed" / RECORD_FILE).read_text())
    assert (record["num_samples"], record["num_resumed"], record["num_generated"]) == (3, 1, 2)
    assert _leftovers(tmp_path / "resumed") == []


def test_cli_end_to_end(models, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["sample", "--ar", str(models["ar_dir"]), "--tokenizer", str(models["tokenizer_dir"]),
                 "--out", str(out), "--per-class", "2", "--classes", "1", "3", "--batch-size", "3",
                 "--cfg-scale", "2.0", "--top-k", "20", "--seed", "7", "--num-keep", "9",
                 "--accelerator", "cpu"])
    assert code == 0
    images, labels = _npz(out)
    assert images.shape == (4, 32, 32, 3) and labels.tolist() == [1, 1, 3, 3]
    assert len(list((out / PNG_DIR).glob("*.png"))) == 4
    record = json.loads((out / "sample.json").read_text())
    assert record["num_samples"] == 4 and record["settings"]["cfg_scale"] == [2.0, 2.0]
    assert record["num_keep"] == 9 and record["seed"] == 7
    assert "KV cache (compressed)" in capsys.readouterr().out

    # the library with the same seed and settings gives the same images (--cfg-scale 2.0 = 2.0 per sub-token)
    settings = SamplingSettings(cfg_scale=(2.0, 2.0), temperature=1.0, top_k=20)
    _run(models, tmp_path / "lib", labels=torch.from_numpy(labels), batch_size=4, settings=settings, write_png=False)
    _assert_same_samples(_npz(tmp_path / "lib")[0], images)
    assert not (tmp_path / "lib" / PNG_DIR).exists()


def _mtimes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*"))}


def test_interrupted_run_resumes_with_another_batch_size(models, tmp_path):
    labels = class_labels(classes=[0, 6, 3], per_class=2)
    reference = _run(models, tmp_path / "whole", labels=labels, batch_size=2)
    out = tmp_path / "resumed"
    with pytest.raises(_Stop):  # an error after 2 batches: 4 samples are done
        _run(models, out, labels=labels, batch_size=2, progress=_stop_after(4))
    assert not (out / NPZ_FILE).exists() and not (out / RECORD_FILE).exists()
    seen = []
    resumed = _run(models, out, labels=labels, batch_size=3, progress=seen.append)
    assert (seen[0].already_done, seen[0].assigned, seen[-1].done) == (4, 2, 2)  # only the missing ones
    assert (resumed.num_resumed, resumed.num_generated, resumed.num_samples) == (4, 2, 6)
    _assert_same_samples(_npz(out)[0], _npz(tmp_path / "whole")[0])
    assert _npz(out)[1].tolist() == labels.tolist()
    # the statistics cover every sample, the resumed ones included
    for name in ("mean_peak_cache_entries", "max_peak_cache_entries", "mean_unique_tokens"):
        assert getattr(resumed, name) == getattr(reference, name), name
    record = json.loads((out / RECORD_FILE).read_text())
    assert record["num_samples"] == 6 and record["mean_unique_tokens"] == reference.mean_unique_tokens
    assert sorted(p.name for p in (out / PNG_DIR).iterdir()) == [png_name(i, c) for i, c in enumerate(labels.tolist())]
    assert _leftovers(out) == []

    before = _mtimes(out)  # a finished folder: reported, nothing regenerated or rewritten
    again = _run(models, out, labels=labels, batch_size=3, progress=_stop_after(0))
    assert again.up_to_date and again.num_generated == 0 and again.mean_unique_tokens == reference.mean_unique_tokens
    assert _mtimes(out) == before


def test_sigkill_then_resume_gives_a_byte_identical_npz(models, tmp_path, capsys):
    """A real SIGKILL of ``mergevq sample`` while it writes samples; the same command resumes it."""
    def args(out: Path) -> list[str]:
        return ["sample", "--ar", str(models["ar_dir"]), "--tokenizer", str(models["tokenizer_dir"]),
                "--out", str(out), "--per-class", "6", "--classes", "1", "3", "5", "7", "9", "--batch-size", "2",
                "--top-k", "20", "--seed", "5", "--num-keep", "9", "--accelerator", "cpu"]

    killed = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MERGEVQ_DEBUG"):
        env.pop(name, None)
    root = Path(__file__).resolve().parents[1]
    process = subprocess.Popen([sys.executable, "-m", "mergevq", *args(killed)], cwd=root, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while len(list((killed / PNG_DIR).glob("*.png"))) < 6:  # 3 of the 15 batches
            assert process.poll() is None, process.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the sampling subprocess wrote no samples in 120 s"
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
        process.stderr.close()
    assert not (killed / NPZ_FILE).exists()

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the subprocess: the same float results
    try:
        capsys.readouterr()
        assert main(args(killed)) == 0  # the same command resumes
        resumed_err = capsys.readouterr().err
        assert main(args(tmp_path / "whole")) == 0
    finally:
        torch.set_num_threads(threads)
    done = int(re.search(r"resuming .*: (\d+) of 30 samples were done", resumed_err).group(1))
    assert 4 <= done < 30, resumed_err
    assert filecmp.cmp(killed / NPZ_FILE, tmp_path / "whole" / NPZ_FILE, shallow=False)
    assert _leftovers(killed) == []
    record = json.loads((killed / RECORD_FILE).read_text())
    assert (record["num_samples"], record["num_resumed"], record["num_generated"]) == (30, done, 30 - done)
    assert len(list((killed / PNG_DIR).iterdir())) == 30


def _cli(models, out: Path, *extra: str) -> list[str]:
    return ["sample", "--ar", str(models["ar_dir"]), "--tokenizer", str(models["tokenizer_dir"]), "--out", str(out),
            "--per-class", "1", "--num-keep", "9", "--accelerator", "cpu", "--write", "both", *extra]


def _one_error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mergevq sample: error:"), lines
    return lines[0]


def test_cli_output_folder_rules(models, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(_cli(models, out, "--classes", "1", "3", "--seed", "7")) == 0
    before = _mtimes(out)
    capsys.readouterr()
    assert main(_cli(models, out, "--classes", "1", "3", "--seed", "7")) == 0
    assert "already holds these 2 samples; nothing to do" in capsys.readouterr().out
    assert _mtimes(out) == before

    # other settings: refused, naming the first difference and the way out; nothing touched
    assert main(_cli(models, out, "--classes", "1", "3", "--seed", "8")) == 2
    line = _one_error_line(capsys)
    assert "seed: 7 there, 8 now" in line and "--overwrite" in line
    assert main(_cli(models, out, "--classes", "1", "3", "--seed", "7", "--full-cache")) == 2
    assert "cache: 'compressed' there, 'full' now" in _one_error_line(capsys)
    assert main(_cli(models, out, "--classes", "1", "3", "--seed", "7", "--exact-k")) == 2  # issue 14: modes never mix
    assert "exact_k" in _one_error_line(capsys)
    assert _mtimes(out) == before
    assert json.loads((out / RECORD_FILE).read_text())["exact_k"] is False
    # --overwrite replaces: exactly the new set of samples is left
    assert main(_cli(models, out, "--classes", "4", "--seed", "8", "--overwrite")) == 0
    assert sorted(p.name for p in (out / PNG_DIR).iterdir()) == [png_name(0, 4)]
    assert _npz(out)[1].tolist() == [4] and json.loads((out / RECORD_FILE).read_text())["seed"] == 8
    capsys.readouterr()

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    for target in (foreign, foreign / "notes.txt"):
        kept = _mtimes(foreign)
        assert main(_cli(models, target, "--classes", "1")) == 2
        assert str(target) in _one_error_line(capsys)
        assert _mtimes(foreign) == kept and (foreign / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--cfg-scale", "1", "2", "3"], r"--cfg-scale \(sample.cfg_scale\) has 3 values 1.0,2.0,3.0 but this "
                                         r"MergeAR has 2 sub-tokens: give one value, or 2 comma-separated values"),
        (["--temperature", "1.1,1.0,0.9"], r"--temperature \(sample.temperature\) has 3 values .* 2 sub-tokens"),
        (["--top-k", "0,x"], r"--top-k 0,x: expected one int or a comma list of ints"),
        (["--num-keep", "17"], "17"),
        (["--classes", "10"], r"class labels must be in \[0, 10\)"),
        (["--top-p", "0"], "sampling settings"),
        (["--devices", "2"], r"--devices 2 \(sample.devices\) but 1 process\(es\) run on this node"),
        (["sample.batch_size=0"], r"sample.batch_size=0 must be >= 1"),
        (["sample.cache=half"], r"sample.cache"),
    ],
    ids=["cfg_count", "temperature_count", "top_k_text", "num_keep", "class", "top_p", "devices", "batch_size",
         "cache"],
)
def test_cli_bad_options_one_line(models, tmp_path, capsys, extra, message):
    code = main(["sample", "--ar", str(models["ar_dir"]), "--tokenizer", str(models["tokenizer_dir"]),
                 "--out", str(tmp_path / "o"), "--per-class", "1", "--accelerator", "cpu", *extra])
    assert code == 2
    assert re.search(message, _one_error_line(capsys))


def test_mismatched_tokenizer_is_an_error(models, tmp_path):
    other = MergeVQ(config=tokenizer_config(preset="tiny-R")).eval()  # 8 x 8 grid
    with pytest.raises(ConfigError, match="was not trained on this tokenizer's codes"):
        sample_to_disk(models["model"], other, labels=torch.tensor([0]), num_keep=4, settings=SETTINGS, seed=0,
                       out_dir=tmp_path, batch_size=1, device=CPU)


# --------------------------------------------------------------------------------------------------
# scripts/evaluation/sample_{gpu,npu}.sh: thin torchrun wrappers


SCRIPTS = Path(__file__).resolve().parents[1] / "scripts" / "evaluation"


@pytest.mark.parametrize(("script", "accelerator"), [("sample_gpu.sh", "cuda"), ("sample_npu.sh", "npu")])
def test_launch_scripts_forward_arguments(script, accelerator):
    import os
    import shlex
    import subprocess

    env = {k: v for k, v in os.environ.items() if k not in ("NNODES", "NODE_RANK", "MERGEVQ_ACCELERATOR")}
    env.update(MERGEVQ_DRY_RUN="1", DEVICES_PER_NODE="4", MERGEVQ_PYTHON="/opt/py")
    args = ["--ar", "runs/ar L", "--tokenizer", "tok", "--out", "out", "--cfg-scale", "1.5", "2"]
    result = subprocess.run(["bash", str(SCRIPTS / script), *args], env=env, capture_output=True, text=True, check=False,
                            timeout=30)
    assert result.returncode == 0, result.stderr
    assert shlex.split(result.stdout) == [
        "/opt/py", "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=4",
        "-m", "mergevq", "sample", "--accelerator", accelerator, *args]
    assert os.access(SCRIPTS / script, os.X_OK)
    env.update(NNODES="2", NODE_RANK="1", MASTER_ADDR="10.0.0.1", MASTER_PORT="29500")
    multi = subprocess.run(["bash", str(SCRIPTS / script), "--per-class", "1"], env=env, capture_output=True,
                           text=True, check=False, timeout=30)
    assert shlex.split(multi.stdout)[3:8] == ["--nnodes=2", "--node_rank=1", "--master_addr=10.0.0.1",
                                              "--master_port=29500", "--nproc_per_node=4"]


# --------------------------------------------------------------------------------------------------
# issue 13: config-backed settings, per-sub-token lists, the common flags, the progress bar


def test_per_sub_token_flags_reach_the_sampler(models, tmp_path):
    """The authors' comma lists: the same images as the library with those per-sub-token settings."""
    out = tmp_path / "out"
    assert main(_cli(models, out, "--classes", "1", "3", "--seed", "7", "--cfg-scale", "1.75,1.85",
                     "-t", "1.1,1.0", "--top-k", "0,20", "--top-p", "1.0,0.9")) == 0
    record = json.loads((out / RECORD_FILE).read_text())
    assert record["settings"] == {"cfg_scale": [1.75, 1.85], "temperature": [1.1, 1.0], "top_k": [0, 20],
                                  "top_p": [1.0, 0.9], "cfg_schedule": "constant"}
    settings = SamplingSettings(cfg_scale=(1.75, 1.85), temperature=(1.1, 1.0), top_k=(0, 20), top_p=(1.0, 0.9))
    _run(models, tmp_path / "lib", labels=torch.tensor([1, 3]), batch_size=2, settings=settings, write_png=False)
    _assert_same_samples(_npz(tmp_path / "lib")[0], _npz(out)[0])


def test_flags_keys_and_recipe_config_mean_the_same(models, tmp_path, capsys):
    """A flag and its key are one setting: a second run with the other spelling finds the folder
    complete (its claim records every setting that decides the images). The explicit flag wins."""
    out = tmp_path / "recipe"
    assert main([*_cli(models, out, "--classes", "2", "--seed", "7"), "--config", "sample/xl_authors",
                 "--batch-size", "1"]) == 0
    out_text = capsys.readouterr().out  # mergevq.cli.common.print_config_files: stdout, rank 0
    configs = [line.removeprefix("config: ") for line in out_text.splitlines() if line.startswith("config: ")]
    assert [Path(c).name for c in configs] == ["base.yaml", "xl_authors.yaml"] and all(Path(c).is_absolute()
                                                                                        for c in configs)
    record = json.loads((out / RECORD_FILE).read_text())
    assert record["config_files"] == configs and record["seed"] == 7  # --seed beat the recipe's 42
    assert record["settings"]["cfg_scale"] == [1.75, 1.85] and record["settings"]["temperature"] == [1.1, 1.0]
    same = _cli(models, out, "--classes", "2", "sample.seed=3", "--seed", "7", "--cfg-scale", "1.75", "1.85",
                "sample.temperature=[1.1,1.0]", "--top-k", "0", "sample.top_p=1")
    assert main(same) == 0
    assert "already holds these 1 samples; nothing to do" in capsys.readouterr().out


def test_exact_k_flag_reaches_the_sampler_and_the_record(models, tmp_path):
    """issue 14: --exact-k samples what the library samples with exact_k; the record says which mode."""
    out = tmp_path / "exact"
    assert main(_cli(models, out, "--classes", "1", "3", "--seed", "7", "--exact-k", "--num-keep", "2",
                     "--no-compile")) == 0
    record = json.loads((out / RECORD_FILE).read_text())
    assert record["exact_k"] is True and record["mean_unique_tokens"] <= 2 and record["cache_capacity"] == 2 + 2 + 4
    settings = SamplingSettings(cfg_scale=1.0, temperature=1.0, exact_k=True)
    sample_to_disk(models["model"], models["tokenizer"], labels=torch.tensor([1, 3]), num_keep=2, settings=settings,
                   seed=7, out_dir=tmp_path / "lib", batch_size=2, device=CPU, write_png=False)
    _assert_same_samples(_npz(tmp_path / "lib")[0], _npz(out)[0])


def test_progress_bar_on_rank_zero(models, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MERGEVQ_PROGRESS", "1")
    assert main(_cli(models, tmp_path / "out", "--classes", "1", "3", "5", "--batch-size", "2")) == 0
    last = capsys.readouterr().err.split("\r")[-1]
    assert "sample: 100%" in last and "3/3" in last and "tokens/s" in last, last
