"""`mergevq evaluate-tokenizer` and `mergevq reconstruct` end to end on a tiny exported tokenizer and a
folder of images that need the resize + centre crop; their launch scripts (dry run).

rFID is switched off here (eval.rfid=false): the 2048-d FID costs one 2048 x 2048 eigen-decomposition
per K (10-40 s on this machine); its path is covered by test_metrics_fid.py and test_tokenizer_eval.py,
and the command's Inception loading by the missing-weights error below.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from _eval_weights import write_random_lpips
from PIL import Image

from mergevq.cli import main
from mergevq.tokenizer.model import MergeVQ, build_config

ROOT = Path(__file__).resolve().parents[1]
EVAL_SCRIPT = ROOT / "scripts" / "evaluation" / "evaluation_mergevq.sh"
RECON_SCRIPT = ROOT / "scripts" / "inference" / "reconstruct.sh"


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("eval_cli")
    torch.manual_seed(0)
    MergeVQ(config=build_config(preset="tiny-R")).save_pretrained(root / "tokenizer")
    write_random_lpips(root / "lpips.pth")
    rng = np.random.default_rng(0)
    (root / "photos" / "sub").mkdir(parents=True)
    for i in range(3):  # 48 x 40: the short side is resized to 32, then the centre is cropped
        pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
        folder = root / "photos" / ("sub" if i == 2 else "")
        Image.fromarray(pixels).save(folder / f"photo{i}.png")
    (root / "photos" / "broken.jpg").write_bytes(b"not an image")
    return root


def test_evaluate_tokenizer_writes_json_and_table(assets, tmp_path, capsys, private_cache):
    out = tmp_path / "eval"
    code = main(["evaluate-tokenizer", "--num-keep", "64,16", "--folder", str(assets / "photos"), "--out", str(out),
                 str(assets / "tokenizer"), "eval.rfid=false", f"eval.lpips_weights={assets / 'lpips.pth'}",
                 "eval.num_workers=0", "eval.batch_size=2", "eval.accelerator=cpu"])
    assert code == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "tokenizer_eval.json").read_text())
    result = report["result"]
    assert (result["num_images"], result["num_skipped"], result["resolution"]) == (3, 1, [32, 32])
    assert [m["num_keep"] for m in result["by_k"]] == [64, 16] and report["eval"]["num_keep"] == [64, 16]
    for m in result["by_k"]:
        assert m["rfid"] is None and m["lpips"] > 0 and m["psnr"] > 0 and 0 < m["codebook_usage"] < 1
    assert report["data"]["params"]["size"] == 32  # eval.resolution null -> the tokenizer's image size
    configs = Path(__file__).resolve().parents[1] / "configs"
    expected = [str((configs / name).resolve()) for name in ("data/folder.yaml", "evaluation/tokenizer.yaml")]
    assert report["config_files"] == expected  # --folder = data=folder, in composition order, absolute
    assert [line[len("config: "):] for line in printed.splitlines() if line.startswith("config: ")] == expected
    table = (out / "tokenizer_eval.md").read_text().splitlines()
    assert len(table) == 4 and table[2].startswith("| 64 |") and table[3].startswith("| 16 |")
    assert table[2] in printed and "3 images, 1 skipped (unreadable or over the pixel limit)" in printed


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


def test_k_above_l_is_a_one_line_error(assets, capsys):
    code = main(["evaluate-tokenizer", "--num-keep", "64,65", "--demo", str(assets / "tokenizer"), "eval.rfid=false",
                 "eval.lpips=false"])
    assert code == 2
    assert "num_keep=65" in _error_line(capsys)


def test_missing_inception_weights_name_the_file_and_the_fix(assets, capsys, private_cache):
    code = main(["evaluate-tokenizer", "--num-keep", "16", "--folder", str(assets / "photos"), str(assets / "tokenizer"),
                 "eval.lpips=false", "eval.num_workers=0"])
    assert code == 2
    err = _error_line(capsys)
    assert "pt_inception-2015-12-05.pth" in err and "mergevq prepare-weights" in err


def test_reconstruct_writes_matching_pngs_and_merge_groups(assets, tmp_path, capsys):
    out = tmp_path / "recon"
    code = main(["reconstruct", "--num-keep", "64,9", "--folder", str(assets / "photos"), "--out", str(out),
                 str(assets / "tokenizer"), "eval.num_workers=0", "eval.batch_size=2"])
    assert code == 0
    assert "wrote 3 images (1 skipped: unreadable or over the pixel limit) at K = 64, 9" in capsys.readouterr().out
    names = sorted(p.name for p in (out / "original").iterdir())
    # data set index (broken.jpg, sorted first, is 0) + file stem: unique and recognisable
    assert names == ["000001_photo0.png", "000002_photo1.png", "000003_photo2.png"]
    for folder in ("K64", "K9", "groups_K64", "groups_K9", "pairs"):
        assert sorted(p.name for p in (out / folder).iterdir()) == names, folder
    first = names[0]
    assert Image.open(out / "original" / first).size == (32, 32)
    assert Image.open(out / "K9" / first).size == (32, 32)
    assert Image.open(out / "groups_K9" / first).size == (256, 256)  # enlarged so group edges show
    # 9 merge groups: the picture holds 9 tints (plus the dark boundaries)
    groups = np.asarray(Image.open(out / "groups_K9" / first))
    assert 9 <= len(np.unique(groups.reshape(-1, 3), axis=0)) < 256 * 256


def _script(script: Path, *args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k not in ("DEVICES_PER_NODE", "CUDA_VISIBLE_DEVICES")}
    full.update(env)
    return subprocess.run(["bash", str(script), *args], env=full, capture_output=True, text=True, timeout=30,
                          check=False, cwd=cwd)


def test_evaluation_script_launch_line(assets):
    run = _script(EVAL_SCRIPT, str(assets / "tokenizer"), "256,144", "eval.batch_size=64", "--folder", "/data/x",
                  "--raw", MERGEVQ_DRY_RUN="1", DEVICES_PER_NODE="8", MERGEVQ_PYTHON="py")
    assert run.returncode == 0, run.stderr
    assert shlex.split(run.stdout) == [
        "py", "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=8", "-m", "mergevq",
        "evaluate-tokenizer", "--num-keep", "256,144", "--folder", "/data/x", "--raw", str(assets / "tokenizer"),
        "eval.batch_size=64"]
    recon = _script(RECON_SCRIPT, str(assets / "tokenizer"), "out_dir", "64", MERGEVQ_DRY_RUN="1",
                    CUDA_VISIBLE_DEVICES="0,1")
    assert recon.returncode == 0, recon.stderr
    assert shlex.split(recon.stdout)[5:] == ["--nproc_per_node=2", "-m", "mergevq", "reconstruct", "--out", "out_dir",
                                             "--num-keep", "64", str(assets / "tokenizer"),
                                             "eval.max_images=50"]


def test_scripts_reject_missing_arguments(tmp_path):
    for script, args, message in [(EVAL_SCRIPT, [], "expected RUN_DIR"),
                                  (EVAL_SCRIPT, [str(tmp_path / "nope")], "does not exist"),
                                  (RECON_SCRIPT, [str(tmp_path / "nope")], "does not exist")]:
        # cwd: the scripts' default RUN_DIR (runs/GR_d64) must not exist there
        run = _script(script, *args, cwd=tmp_path, MERGEVQ_DRY_RUN="1")
        assert run.returncode == 2 and message in run.stderr and "usage:" in run.stderr


# --------------------------------------------------------------------------------------------------
# Output folders (issue 11): an earlier output of the same command is replaced, never mixed with the
# new one; any other folder, or a file, is refused in one line and left untouched.


def _tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*"))}


def _foreign(tmp_path: Path) -> Path:
    folder = tmp_path / "foreign"
    (folder / "K64").mkdir(parents=True)  # even names the command would write do not make it its folder
    (folder / "K64" / "mine.png").write_bytes(b"not theirs")
    (folder / "notes.txt").write_text("keep")
    return folder


def test_reconstruct_replaces_its_own_output_and_refuses_others(assets, tmp_path, capsys, private_cache):
    out = tmp_path / "recon"
    common = [str(assets / "tokenizer"), "eval.num_workers=0", "eval.batch_size=2"]
    assert main(["reconstruct", "--num-keep", "64,9", "--folder", str(assets / "photos"), "--out", str(out),
                 *common]) == 0
    # fewer images and other K: exactly the new set is left, nothing of the first run
    assert main(["reconstruct", "--num-keep", "16", "--folder", str(assets / "photos"), "--out", str(out), *common,
                 "eval.max_images=2"]) == 0
    capsys.readouterr()
    assert sorted(p.name for p in out.iterdir()) == [".mergevq-output.json", "K16", "groups_K16", "original", "pairs"]
    for folder in ("original", "K16", "groups_K16", "pairs"):
        assert sorted(p.name for p in (out / folder).iterdir()) == ["000001_photo0.png"], folder

    foreign = _foreign(tmp_path)
    (tmp_path / "file.png").write_bytes(b"png")
    for target, message in ((foreign, "holds no earlier output of mergevq reconstruct"),
                            (tmp_path / "file.png", "expected a folder, but it is a file"),
                            (tmp_path / "eval", "holds the output of mergevq evaluate-tokenizer")):
        if target.name == "eval":
            main(["evaluate-tokenizer", "--num-keep", "16", "--demo", "--out", str(target), str(assets / "tokenizer"),
                  "eval.rfid=false", "eval.lpips=false", "eval.max_images=2", "eval.num_workers=0"])
            capsys.readouterr()
        before = _tree(target) if target.is_dir() else target.read_bytes()
        assert main(["reconstruct", "--demo", "--out", str(target), *common]) == 2
        assert message in _error_line(capsys)
        assert (_tree(target) if target.is_dir() else target.read_bytes()) == before


def test_evaluate_tokenizer_replaces_its_own_output_and_refuses_others(assets, tmp_path, capsys, private_cache):
    out = tmp_path / "eval"
    args = ["evaluate-tokenizer", "--num-keep", "16", "--demo", str(assets / "tokenizer"), "eval.rfid=false",
            "eval.lpips=false", "eval.num_workers=0"]
    assert main([*args, "--out", str(out), "eval.max_images=3"]) == 0
    assert main([*args, "--out", str(out), "eval.max_images=2"]) == 0  # its own output: replaced
    capsys.readouterr()
    assert sorted(p.name for p in out.iterdir()) == [".mergevq-output.json", "tokenizer_eval.json", "tokenizer_eval.md"]
    assert json.loads((out / "tokenizer_eval.json").read_text())["result"]["num_images"] == 2

    foreign = _foreign(tmp_path)
    (tmp_path / "file.json").write_text("{}")
    for target in (foreign, tmp_path / "file.json"):
        before = _tree(target) if target.is_dir() else target.read_bytes()
        assert main([*args, "--out", str(target)]) == 2
        assert str(target) in _error_line(capsys)
        assert (_tree(target) if target.is_dir() else target.read_bytes()) == before
