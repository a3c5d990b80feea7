"""``mergevq sample`` (issue 6 item 6): seeded class-conditional sampling, sharded, to PNGs + ADM npz.

Invariants: sample i's image depends only on (global seed, i) and its label, not on the batch size
(1 vs 4) or the process count (1 vs 2 gloo ranks with uneven shards); the npz holds the images in
sample order and equals the PNGs; the CLI writes the documented layout; mismatched models and bad
options are one-line errors. A tiny MergeAR and a tiny tokenizer (random weights) on the CPU.
"""

from __future__ import annotations

import json
import re
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
from mergevq.inference.sample import (
    NPZ_FILE,
    PNG_DIR,
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
         write_png: bool = True):
    return sample_to_disk(models["model"], models["tokenizer"], labels=labels, num_keep=9, settings=settings,
                          seed=7, out_dir=out, batch_size=batch_size, device=CPU, context=context,
                          write_png=write_png)


def _npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path / NPZ_FILE) as data:
        return data["arr_0"], data["arr_1"]


def _assert_same_samples(a: np.ndarray, b: np.ndarray) -> None:
    """The same token grids decode to the same pixels up to float rounding: the decoder's batched
    convolutions round differently for another batch shape, which can move a pixel by one grey
    level. A different seed or sample order changes nearly every pixel."""
    assert a.shape == b.shape
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, (diff.max(), (diff > 0).mean())


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
        _run(models, root / "ranks", labels=class_labels(classes=[2, 9, 5], per_class=1),
             batch_size=2, context=DistContext(rank=rank, world_size=world, local_rank=rank))
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_two_processes_equal_one(models, tmp_path):
    (tmp_path / "models").mkdir()
    for name in ("ar", "tokenizer"):
        (tmp_path / "models" / name).symlink_to(models[f"{name}_dir"])
    run_ranks(_two_rank_worker, world=2, tmp_path=tmp_path, timeout_s=180, what="2-process sampling")
    _run(models, tmp_path / "single", labels=class_labels(classes=[2, 9, 5], per_class=1), batch_size=3)
    images_2, labels_2 = _npz(tmp_path / "ranks")
    images_1, labels_1 = _npz(tmp_path / "single")
    assert labels_2.tolist() == labels_1.tolist() == [2, 9, 5]
    _assert_same_samples(images_2, images_1)  # shards of 2 + 1 samples, reassembled in order
    assert sorted(p.name for p in (tmp_path / "ranks" / PNG_DIR).iterdir()) == \
        sorted(p.name for p in (tmp_path / "single" / PNG_DIR).iterdir())


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


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--cfg-scale", "1", "2", "3"], "--cfg-scale takes 1 or 2 values"),
        (["--num-keep", "17"], "17"),
        (["--classes", "10"], r"class labels must be in \[0, 10\)"),
        (["--top-p", "0"], "sampling settings"),
    ],
    ids=["cfg_count", "num_keep", "class", "top_p"],
)
def test_cli_bad_options_one_line(models, tmp_path, capsys, extra, message):
    code = main(["sample", "--ar", str(models["ar_dir"]), "--tokenizer", str(models["tokenizer_dir"]),
                 "--out", str(tmp_path / "o"), "--per-class", "1", "--accelerator", "cpu", *extra])
    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mergevq sample: error:"), lines
    assert re.search(message, lines[0]), lines[0]


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
