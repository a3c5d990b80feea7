"""``eval.protocol: official`` (mergevq/metrics/official_protocol.py): the authors' batch PSNR on
truncated 8-bit images, scikit-image SSIM, pytorch-fid's Inception input pipeline and sqrtm Fréchet
distance, and the wiring into ``mergevq evaluate-tokenizer``.

Offline stand-ins: a random Inception in torch-fidelity's layout (tests/_eval_weights.py), read at its
"64" feature layer where a 2048-d FID would cost a 2048 x 2048 matrix square root per K.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from _eval_weights import write_random_inception
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from mergevq.errors import ConfigError
from mergevq.metrics import official_protocol as O
from mergevq.pretrained import load_inception_extractor

CPU = torch.device("cpu")


def _from_levels(levels: torch.Tensor) -> torch.Tensor:
    """8-bit levels -> [-1, 1] floats that the authors' truncation maps back to exactly those levels
    (half a level above, so float rounding cannot drop one)."""
    return (levels.float() + 0.5) / 127.5 - 1


def _images(n: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


def _authors_psnr_ssim(rec: torch.Tensor, x: torch.Tensor, batch_size: int) -> tuple[float, float]:
    """The authors' loop over batches with scikit-image, on their float32 arithmetic."""
    psnrs, ssims = [], []
    for start in range(0, x.shape[0], batch_size):
        r01 = (rec[start:start + batch_size].clamp(-1, 1) + 1) / 2
        x01 = (x[start:start + batch_size] + 1) / 2
        r = (r01 * 255.0).permute(0, 2, 3, 1).to(torch.uint8).numpy().astype(np.float32) / 255.0
        g = (x01 * 255.0).permute(0, 2, 3, 1).to(torch.uint8).numpy().astype(np.float32) / 255.0
        psnrs.append(peak_signal_noise_ratio(g, r))  # the whole batch at once
        ssims.append(np.mean([structural_similarity(r[i], g[i], data_range=1.0, channel_axis=-1)
                              for i in range(r.shape[0])]))
    return float(np.mean(psnrs)), float(np.mean(ssims))


# ---------------------------------------------------------------------------------------------------
# PSNR / SSIM


def test_batch_psnr_is_the_hand_computation_and_not_the_per_image_mean():
    # 4 flat grey images, reconstructions off by 1, 3, 10 and 2 levels; batches of 2
    x = _from_levels(torch.full((4, 3, 8, 8), 100))
    offsets = torch.tensor([1, 3, 10, 2]).view(4, 1, 1, 1)
    rec = _from_levels(100 + offsets.expand(4, 3, 8, 8))
    mse = O.mse_8bit_per_image(rec, x)
    assert mse.tolist() == pytest.approx([d * d / 255.0 ** 2 for d in (1, 3, 10, 2)], rel=1e-12)
    by_hand = (10 * math.log10(255 ** 2 / ((1 + 9) / 2)) + 10 * math.log10(255 ** 2 / ((100 + 4) / 2))) / 2
    assert O.batch_psnr(mse, 2) == pytest.approx(by_hand, rel=1e-12)
    per_image_mean = sum(10 * math.log10(255 ** 2 / d ** 2) for d in (1, 3, 10, 2)) / 4
    assert per_image_mean - by_hand > 3  # Jensen: pooling the MSE first gives a lower PSNR
    assert O.batch_psnr(mse, 1) == pytest.approx(per_image_mean, rel=1e-12)
    # a short last batch counts as a whole batch in the mean
    assert O.batch_psnr(mse[:3], 2) == pytest.approx(
        (10 * math.log10(255 ** 2 / 5) + 10 * math.log10(255 ** 2 / 100)) / 2, rel=1e-12)
    assert O.batch_mean([1.0, 2.0, 6.0], 2) == pytest.approx((1.5 + 6.0) / 2)


def test_psnr_and_ssim_equal_the_authors_scikit_image_loop():
    x = _images(7, size=20)
    rec = x + 0.15 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))  # leaves [-1, 1]
    rec = rec.clamp(-1, 1)
    psnr, ssim = _authors_psnr_ssim(rec, x, batch_size=3)
    assert O.batch_psnr(O.mse_8bit_per_image(rec, x), 3) == pytest.approx(psnr, abs=1e-5)
    assert O.batch_mean(O.ssim_8bit_per_image(rec, x), 3) == pytest.approx(ssim, abs=1e-5)


def test_truncation_not_rounding():
    levels = torch.arange(256).view(1, 1, 16, 16).expand(1, 3, 16, 16)
    decoded = levels.float() / 127.5 - 1  # what an 8-bit image becomes in the data pipeline
    truncated = O.to_8bit_truncated(decoded).long()
    assert int((truncated != levels).sum()) > 0  # float rounding then truncation drops a level ...
    assert int((levels - truncated).max()) == 1  # ... by one at most
    assert torch.equal(O.to_8bit_truncated(_from_levels(levels)).long(), levels)


def test_protocol_and_batch_size_errors_are_one_line():
    assert O.check_protocol("official") == "official" and O.check_protocol("ours") == "ours"
    for bad in ("paper", None, 1):
        with pytest.raises(ConfigError, match=r"^eval\.protocol=.*expected one of ours, official$"):
            O.check_protocol(bad)
    with pytest.raises(ConfigError, match=r"eval\.official_batch_size=0"):
        O.check_official_batch_size(0)


# ---------------------------------------------------------------------------------------------------
# FID


def test_frechet_distance_identical_sets_zero_and_closed_form():
    feats = torch.randn(64, 6, generator=torch.Generator().manual_seed(0))
    assert abs(O.official_fid_from_features(feats, feats)) < 1e-8
    # diagonal Gaussians: |mu1 - mu2|^2 + sum (s1 - s2)^2 with s the standard deviations
    mu1, mu2 = np.zeros(3), np.array([1.0, 0.0, 2.0])
    s1, s2 = np.array([1.0, 2.0, 3.0]), np.array([2.0, 2.0, 1.0])
    by_hand = 1 + 4 + (1 + 0 + 4)
    assert O.frechet_distance(mu1, np.diag(s1 ** 2), mu2, np.diag(s2 ** 2)) == pytest.approx(by_hand, rel=1e-10)
    # a non-degenerate case agrees with torch-fidelity's eigenvalue form
    from mergevq.metrics.fid import fid_from_features

    other = torch.randn(64, 6, generator=torch.Generator().manual_seed(1)) * 1.5 + 0.3
    assert O.official_fid_from_features(feats, other) == pytest.approx(fid_from_features(feats, other), rel=1e-5)


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory) -> Path:
    return write_random_inception(tmp_path_factory.mktemp("official") / "inception.pth")


def test_official_inception_runs_torch_fidelity_layers_on_pytorch_fid_inputs(inception_file):
    # torch-fidelity's forward on a uint8 image u whose size it resizes to (the identity) normalises it to
    # (u - 128) / 128: the official network on that same input must give exactly its pool3 features
    # (a 96 px input instead of 299 keeps this cheap; the layers are the same)
    u = torch.randint(0, 256, (2, 3, 96, 96), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    extractor = load_inception_extractor(None, ("2048",), path=inception_file)
    extractor.INPUT_IMAGE_SIZE = 96
    official = O.OfficialInceptionFeatures(extractor=extractor, layer="2048")
    torch.testing.assert_close(official.features_from_input(u.float() / 128 - 1), extractor(u)[0],
                               rtol=1e-5, atol=1e-5)
    # the official input path: float images to [0, 1], bilinear resize to 299 (align_corners=False), 2x - 1
    small = O.OfficialInceptionFeatures(extractor=extractor, layer="64")  # its own resize, not the extractor's
    x = _images(2, size=32)
    expected = small.features_from_input(
        2 * torch.nn.functional.interpolate((x + 1) / 2, size=(299, 299), mode="bilinear", align_corners=False) - 1)
    torch.testing.assert_close(small(x), expected)
    assert not torch.allclose(small(x), small(x + 0.3 / 255))  # a third of a grey level moves the features


# ---------------------------------------------------------------------------------------------------
# The pass


def test_official_numbers_come_from_the_same_pass_and_equal_the_authors_computation(inception_file):
    from mergevq.inference.tokenizer_eval import ImageTensorDataset, evaluate_tokenizer
    from mergevq.tokenizer.model import MergeVQ, preset

    torch.manual_seed(0)
    model = MergeVQ(config=preset("tiny-R")).eval()
    images = _images(5, size=32)
    inception = O.OfficialInceptionFeatures.load(path=inception_file, layer="64")

    def run(batch_size, with_fid):
        return evaluate_tokenizer(
            model, ImageTensorDataset(images), num_keep=[64, 16], inception=None, lpips=None,
            batch_size=batch_size, device=CPU,
            official=O.OfficialProtocol(batch_size=3, inception=inception if with_fid else None))

    result = run(5, True)
    # PSNR / SSIM groups are formed after the pass: the loader's batch size does not matter (up to the
    # model's own float noise between batch sizes, which 8-bit truncation can turn into a grey level)
    other = run(2, False)
    for a, b in zip(result.by_k, other.by_k, strict=True):
        assert (a.psnr_official, a.ssim_official) == pytest.approx((b.psnr_official, b.ssim_official), abs=1e-3)
        assert b.rfid_official is None and a.rfid is None
    assert result.official_batch_size == 3
    reference = inception(images)
    with torch.no_grad():
        for m in result.by_k:
            enc = model.encode(images, m.num_keep)
            rec = model.decode_codes(enc.codes, enc.assign).clamp(-1, 1)
            psnr, ssim = _authors_psnr_ssim(rec, images, batch_size=3)
            assert m.psnr_official == pytest.approx(psnr, abs=1e-5)
            assert m.ssim_official == pytest.approx(ssim, abs=1e-5)
            assert m.rfid_official == pytest.approx(O.official_fid_from_features(reference, inception(rec)), rel=1e-5)
    table = result.official_table().splitlines()
    assert len(table) == 4 and table[2].startswith("| 64 |")
    assert run(5, False).official_table() != "" and evaluate_tokenizer(
        model, ImageTensorDataset(images), num_keep=[64], inception=None, lpips=None, batch_size=5,
        device=CPU).official_table() == ""
    with pytest.raises(ConfigError, match="eval.official_batch_size=0"):
        O.OfficialProtocol(batch_size=0)


# ---------------------------------------------------------------------------------------------------
# `mergevq evaluate-tokenizer`


@pytest.fixture(scope="module")
def cli_assets(tmp_path_factory, inception_file) -> Path:
    from mergevq.tokenizer.model import MergeVQ, build_config

    root = tmp_path_factory.mktemp("official_cli")
    torch.manual_seed(0)
    MergeVQ(config=build_config(preset="tiny-R")).save_pretrained(root / "tokenizer")
    rng = np.random.default_rng(0)
    (root / "photos").mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / "photos" / f"p{i}.png")
    return root


def _cli(assets: Path, out: Path, *overrides: str) -> int:
    from mergevq.cli import main

    return main(["evaluate-tokenizer", "--num-keep", "16", "--folder", str(assets / "photos"), "--out", str(out),
                 str(assets / "tokenizer"), "eval.lpips=false", "eval.num_workers=0", "eval.batch_size=2",
                 "eval.accelerator=cpu", *overrides])


def test_evaluate_tokenizer_official_protocol_end_to_end(cli_assets, inception_file, tmp_path, capsys,
                                                         monkeypatch):
    monkeypatch.setattr(O, "FEATURE_LAYER", "64")
    out = tmp_path / "eval"
    assert _cli(cli_assets, out, "eval.protocol=official", "eval.official_batch_size=2",
                f"eval.inception_weights={inception_file}") == 0
    report = json.loads((out / "tokenizer_eval.json").read_text())
    assert report["eval"]["protocol"] == "official" and report["result"]["official_batch_size"] == 2
    assert report["result"]["num_images"] == 3
    for m in report["result"]["by_k"]:
        assert m["rfid"] is None  # our rFID is not computed under the official protocol
        assert m["rfid_official"] > 0 and math.isfinite(m["psnr_official"]) and 0 < m["ssim_official"] <= 1
        assert m["psnr"] > m["psnr_official"] - 1.0  # ours: float, per image; theirs: pooled per batch
    table = (out / "tokenizer_eval.md").read_text()
    assert "rFID (official)" in table and "rFID (official)" in capsys.readouterr().out


def test_default_protocol_has_no_official_numbers(cli_assets, tmp_path):
    out = tmp_path / "eval"
    assert _cli(cli_assets, out, "eval.rfid=false", "eval.max_images=1") == 0
    report = json.loads((out / "tokenizer_eval.json").read_text())
    assert report["eval"]["protocol"] == "ours" and report["result"]["official_batch_size"] is None
    assert all(m["psnr_official"] is None and m["rfid_official"] is None for m in report["result"]["by_k"])


def test_unknown_protocol_is_a_one_line_error(cli_assets, tmp_path, capsys):
    assert _cli(cli_assets, tmp_path / "eval", "eval.protocol=paper", "eval.rfid=false") == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert "eval.protocol='paper'" in err and "ours, official" in err
