"""The offline VGG-16 teacher (source ``lpips-vgg16``), the demo crops' alignment views, and the
``alignment`` experiment end to end in its --quick form.

The real teacher needs ``mergevq prepare-weights``; here a randomly initialised VGG-16 goes through
the same code path, and a state dict written in the prepared LPIPS layout checks the strict load.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from mergevq.cli import main
from mergevq.errors import ConfigError, WeightsError
from mergevq.tokenizer.alignment import LPIPS_VGG16, Teacher, build_teacher
from mergevq.tokenizer.vgg_teacher import FEATURE_DIM, VGG16Pooled

from _teacher_parent import Parent


@pytest.fixture(scope="module")
def random_teacher() -> Teacher:
    return build_teacher(source=LPIPS_VGG16, random_init=True)


def _prepared_folder(root, state: dict) -> None:
    """``state`` (VGG16Pooled.features keys) written as the full LPIPS state dict prepare-weights writes."""
    import warnings

    import lpips

    with warnings.catch_warnings():  # lpips passes torchvision's deprecated ``pretrained=False``
        warnings.simplefilter("ignore", UserWarning)
        full = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False).state_dict()
    for key in list(full):
        if key.startswith("net.slice"):
            _, _, index, param = key.split(".")
            full[key] = state[f"{index}.{param}"].clone()
    (root / "lpips").mkdir(parents=True)
    torch.save(full, root / "lpips" / "vgg.pth")


def test_vgg_teacher_is_frozen_unsaved_and_gives_512(random_teacher):
    assert random_teacher.dim == FEATURE_DIM == 512 and random_teacher.source == LPIPS_VGG16
    parent = Parent(random_teacher)
    assert all(not k.startswith("teacher") for k in parent.state_dict())
    assert sum(p.numel() for p in parent.parameters()) == sum(p.numel() for p in parent.head.parameters())
    assert all(not p.requires_grad for p in random_teacher.model.parameters())
    parent.train()
    assert not random_teacher.model.training
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    out = random_teacher(x)
    assert out.shape == (2, 512) and torch.isfinite(out).all() and not out.requires_grad
    assert random_teacher(torch.randn(1, 3, 64, 64)).shape == (1, 512)  # any size >= 16 px


def test_building_the_teacher_leaves_the_global_rng_alone():
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    build_teacher(source=LPIPS_VGG16, random_init=True)
    assert torch.equal(torch.rand(4), expected)  # aligned and control runs initialise the tokenizer alike


def test_loads_the_prepared_lpips_layout_strictly(tmp_path, random_teacher):
    state = {k: torch.randn_like(v) for k, v in VGG16Pooled().features.state_dict().items()}
    _prepared_folder(tmp_path, state)
    teacher = build_teacher(source=LPIPS_VGG16, path=str(tmp_path))
    loaded = teacher.model.features.state_dict()
    assert all(torch.equal(loaded[k], state[k]) for k in state)

    broken = tmp_path / "broken"
    _prepared_folder(broken, {k: v[..., :1] if k == "28.weight" else v for k, v in state.items()})
    with pytest.raises(WeightsError, match="holds no LPIPS VGG-16 backbone") as err:
        build_teacher(source=LPIPS_VGG16, path=str(broken))
    assert "\n" not in str(err.value) and "mergevq prepare-weights" in str(err.value)


def test_missing_weights_name_the_command(tmp_path):
    with pytest.raises(WeightsError, match="mergevq prepare-weights") as err:
        build_teacher(source=LPIPS_VGG16, path=str(tmp_path))
    assert "\n" not in str(err.value) and "vgg.pth" in str(err.value)
    with pytest.raises(ConfigError, match="random_init is only for source lpips-vgg16"):
        build_teacher(source="timm", path=str(tmp_path), model_name="vit_small_patch14_dinov2", random_init=True)


def test_demo_images_give_teacher_and_student_views(tmp_path):
    from mergevq.data.demo import DemoImages

    small = dict(train_per_photo=2, val_per_photo=1, cache_dir=str(tmp_path))
    ds = DemoImages(split="train", size=16, views=True, view_size=24, flip=True, **small)
    item = ds.get(0, generator=torch.Generator().manual_seed(0))
    assert item["teacher_image"].shape == (3, 24, 24) and item["student_image"].shape == (3, 16, 16)
    plain = DemoImages(split="train", size=16, **small)[0]["image"]
    assert torch.equal(item["student_image"], plain) or torch.equal(item["student_image"], plain.flip(-1))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    unit = item["teacher_image"] * std + mean  # ImageNet-normalised, never flipped
    assert 0 <= float(unit.min()) and float(unit.max()) <= 1 + 1e-5
    assert (unit.mean(dim=(1, 2)) - (plain + 1).div(2).mean(dim=(1, 2))).abs().max() < 0.03
    with pytest.raises(ValueError, match="view_size"):
        DemoImages(split="train", size=16, views=True, view_size=0, **small)


def test_alignment_quick_end_to_end(tmp_path):
    out = tmp_path / "exp"
    assert main(["experiment", "alignment", "--quick", "--out", str(out), "--threads", "2"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert (out / "probe_vs_psnr.png").stat().st_size > 1000
    markdown = (out / "report.md").read_text()
    assert "| GR + VGG |" in markdown and "| GR no align |" in markdown and "![probe_vs_psnr](probe_vs_psnr.png)" in markdown
    runs = report["numbers"]["runs"]
    assert [(r["family"], r["aligned"]) for r in runs] == [("GR", True), ("GR", False)]
    for r in runs:
        assert 0 < r["psnr"] < 60 and math.isfinite(r["ssim"]) and r["steps"] == 2
        assert set(r["probe_top1"]) == {"cls", "mean"}
        assert all(0 <= v <= 1 for v in r["probe_top1"].values())
        assert r["rfid"] is None  # --quick: no rFID
        assert (r["final_align_loss"] is not None) == r["aligned"]  # read back from the run's metrics.csv
    assert math.isfinite(runs[0]["final_align_loss"]) and runs[0]["final_align_loss"] >= 0
    assert len(report["claims"]) == 3 and all(isinstance(c["held"], bool) for c in report["claims"])
    assert report["numbers"]["random_teacher"] == any("RANDOMLY" in n for n in report["notes"])


def test_full_form_without_prepared_weights_is_one_line_naming_the_command(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MERGEVQ_CACHE", str(tmp_path / "empty_cache"))
    assert main(["experiment", "alignment", "--out", str(tmp_path / "exp")]) != 0
    err = capsys.readouterr().err.strip()
    assert "mergevq prepare-weights" in err and "\n" not in err
