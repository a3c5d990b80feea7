"""Bounded memory per image: the pixel limit, decompression bombs, and float64-free conversions.

Big test images are written without ever holding their pixels: a PNG is a header plus zlib-streamed
rows, so a 13000x13000 16-bit file is ~330 KB and takes about a second to write.
"""

from __future__ import annotations

import io
import json
import logging
import os
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from _data_images import write_bad_images, write_good_images, write_jpeg
from PIL import Image
from torch.utils.data import DataLoader

from mergevq.data.skips import SkippedImagesReport, describe_skips
from taming.data.base import ImagePaths, Skipped, collate_skip_none
from taming.data.errors import DataError
from taming.data.folder import DEFAULT_EXTENSIONS, ImageFolder
from taming.data.image_io import OVERSIZE, UNREADABLE, DecodeFailure, decode_rgb, load_rgb, to_rgb
from taming.data.imagenet import ImageNetTrain
from taming.data.transforms import ImageTransform

REPO = Path(__file__).resolve().parents[1]


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def zero_png(width: int, height: int, *, bit_depth: int) -> bytes:
    """A greyscale PNG (colour type 0) of zeros, compressed row by row: never materialised."""
    row = b"\x00" + bytes((width * bit_depth + 7) // 8)  # filter byte 0 + the row's bytes
    compressor = zlib.compressobj()
    parts = [b"\x89PNG\r\n\x1a\n",
             _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0))]  # fmt: skip
    for _ in range(height):
        data = compressor.compress(row)
        if data:
            parts.append(_png_chunk(b"IDAT", data))
    parts += [_png_chunk(b"IDAT", compressor.flush()), _png_chunk(b"IEND", b"")]
    return b"".join(parts)


def lying_ico(png: bytes, *, declared: int = 16) -> bytes:
    """An ICO whose directory declares a ``declared``² icon but which embeds ``png``."""
    header = struct.pack("<HHH", 0, 1, 1)
    entry = struct.pack("<BBBBHHII", declared, declared, 0, 0, 1, 32, len(png), 6 + 16)
    return header + entry + png


@pytest.fixture(scope="module")
def huge_png(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("huge") / "huge.png"
    path.write_bytes(zero_png(13000, 13000, bit_depth=16))
    return path


def _bomb_warnings(record: list[warnings.WarningMessage]) -> list[warnings.WarningMessage]:
    return [w for w in record if issubclass(w.category, Image.DecompressionBombWarning)]


# -- the limit ---------------------------------------------------------------------------------


def test_over_the_limit_is_rejected_from_the_header(tmp_path):
    write_jpeg(str(tmp_path / "a.jpg"), size=60)
    failure = decode_rgb(tmp_path / "a.jpg", max_pixels=3599)
    assert failure == DecodeFailure(reason=OVERSIZE, detail="60x60 px, over the 3599 px limit")
    assert decode_rgb(tmp_path / "a.jpg", max_pixels=3600).size == (60, 60)
    assert load_rgb(tmp_path / "a.jpg", max_pixels=3599) is None
    assert decode_rgb(tmp_path / "nope.jpg") == DecodeFailure(reason=UNREADABLE)


def test_huge_png_is_skipped_without_a_warning(huge_png):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        default = decode_rgb(huge_png)  # 169 Mpx > Pillow's 89.5 Mpx: Pillow's check fires first
        raised = decode_rgb(huge_png, max_pixels=150_000_000)  # above Pillow's: ours decides
    assert default == DecodeFailure(reason=OVERSIZE, detail="169 Mpx, over the 40 Mpx limit")
    assert raised == DecodeFailure(reason=OVERSIZE, detail="13000x13000 px, over the 150 Mpx limit")
    assert _bomb_warnings(record) == []


def test_decompression_bombs_are_skipped(tmp_path):
    bomb = tmp_path / "bomb.png"  # 400 Mpx: over Pillow's hard 179 Mpx limit, whatever ours is
    bomb.write_bytes(zero_png(20000, 20000, bit_depth=1))
    ico = tmp_path / "lying.ico"  # the directory says 16x16; the embedded PNG is 100 Mpx
    ico.write_bytes(lying_ico(zero_png(10000, 10000, bit_depth=1)))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        results = {
            "bomb": decode_rgb(bomb, max_pixels=10**9),
            "ico": decode_rgb(ico),  # caught by Pillow's check before the PNG is decoded
        }
    assert results["bomb"] == DecodeFailure(
        reason=OVERSIZE, detail="400 Mpx, over Pillow's decompression-bomb limit"
    )
    assert results["ico"] == DecodeFailure(reason=OVERSIZE, detail="100 Mpx, over the 40 Mpx limit")
    assert _bomb_warnings(record) == []


def test_a_lying_header_below_pillows_threshold_is_caught_after_decoding(tmp_path):
    ico = tmp_path / "small.ico"
    ico.write_bytes(lying_ico(zero_png(64, 64, bit_depth=8), declared=16))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow's own "Image was not the expected size"
        assert decode_rgb(ico, max_pixels=1000) == DecodeFailure(
            reason=OVERSIZE, detail="64x64 px, over the 1000 px limit"
        )
        assert decode_rgb(ico, max_pixels=4096).size == (64, 64)


def test_none_means_pillows_limit(tmp_path, monkeypatch):
    write_jpeg(str(tmp_path / "a.jpg"), size=40)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert decode_rgb(tmp_path / "a.jpg", max_pixels=None) == DecodeFailure(
        reason=OVERSIZE, detail="1600 px, over the 1000 px limit"  # Pillow's check names no sides
    )
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # Pillow's check switched off: no limit
    assert decode_rgb(tmp_path / "a.jpg", max_pixels=None).size == (40, 40)


@pytest.mark.parametrize("bad", [0, -5, 1.5, "40M", True])
def test_max_pixels_is_validated(tmp_path, bad):
    write_jpeg(str(tmp_path / "a.jpg"))
    message = r"max_pixels must be a whole number of pixels >= 1 .* or null"
    with pytest.raises(DataError, match=message):
        ImageFolder(root=str(tmp_path), max_pixels=bad)
    with pytest.raises(DataError, match=message):
        ImageNetTrain(root=str(tmp_path / "not-even-scanned"), max_pixels=bad)
    with pytest.raises(DataError, match=message):
        ImagePaths(paths=[str(tmp_path / "a.jpg")], transform=ImageTransform(size=8), max_pixels=bad)


def test_all_images_oversize_is_an_error_naming_the_limit(tmp_path):
    write_jpeg(str(tmp_path / "a.jpg"), size=60)
    write_bad_images(str(tmp_path))
    with pytest.raises(DataError, match=r"\(3 files tried; e.g. .*a.jpg: 60x60 px, over the 100 px limit"):
        ImageFolder(root=str(tmp_path), max_pixels=100)


# -- skips through the dataset, a DataLoader and the report ------------------------------------


@pytest.fixture()
def limits_folder(tmp_path):
    root = tmp_path / "limits"
    write_good_images(str(root))  # 7 readable, the largest 48x48 = 2304 px
    write_bad_images(str(root))  # 2 unreadable
    write_jpeg(str(root / "big.jpg"), size=60)  # 3600 px: over the limit below
    (root / "bomb.png").write_bytes(zero_png(20000, 20000, bit_depth=1))
    (root / "lying.ico").write_bytes(lying_ico(zero_png(10000, 10000, bit_depth=1)))
    return str(root)


def test_skips_carry_their_reason_through_a_dataloader(limits_folder):
    ds = ImageFolder(root=limits_folder, size=16, max_pixels=2500,
                     extensions=DEFAULT_EXTENSIONS + (".ico",))  # fmt: skip
    assert len(ds) == 12
    skipped = [s for s in (ds[i] for i in range(len(ds))) if isinstance(s, Skipped)]
    assert sorted((os.path.basename(s.path), s.reason) for s in skipped) == [
        ("big.jpg", OVERSIZE), ("bomb.png", OVERSIZE), ("corrupt.jpg", UNREADABLE),
        ("lying.ico", OVERSIZE), ("truncated.png", UNREADABLE),
    ]  # fmt: skip
    loader = DataLoader(ds, batch_size=4, num_workers=2, collate_fn=collate_skip_none)
    batches = list(loader)
    reasons = {
        os.path.basename(path): (reason, detail)
        for batch in batches
        for path, reason, detail in zip(
            batch["skipped_paths"], batch["skipped_reasons"], batch["skipped_details"]
        )
    }
    assert sum(b["num_skipped"] for b in batches) == 5
    assert sum(b["image"].shape[0] for b in batches if "image" in b) == 7
    assert reasons == {
        "big.jpg": (OVERSIZE, "60x60 px, over the 2500 px limit"),
        "bomb.png": (OVERSIZE, "400 Mpx, over the 2500 px limit"),
        "lying.ico": (OVERSIZE, "100 Mpx, over the 2500 px limit"),
        "corrupt.jpg": (UNREADABLE, ""),
        "truncated.png": (UNREADABLE, ""),
    }
    assert _report_line(batches) == (
        f"skipped 5 images this train epoch: 2 unreadable (e.g. {ds.paths[3]}), "
        f"3 oversize (e.g. {ds.paths[0]}: 60x60 px, over the 2500 px limit)"
    )


def _report_line(batches: list[dict]) -> str:
    """What ``SkippedImagesReport`` logs at the end of an epoch of ``batches`` (one rank)."""
    report = SkippedImagesReport()
    trainer = SimpleNamespace(strategy=SimpleNamespace(reduce=lambda t, reduce_op: t),
                              is_global_zero=True, sanity_checking=False)  # fmt: skip
    module = SimpleNamespace(device=torch.device("cpu"))
    for i, batch in enumerate(batches):
        report.on_train_batch_end(trainer, module, None, batch, i)
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("mergevq.data.skips")
    logger.addHandler(handler)
    try:
        report.on_train_epoch_end(trainer, module)
    finally:
        logger.removeHandler(handler)
    assert report.last_reasons["train"] == {UNREADABLE: 2, OVERSIZE: 3}
    (record,) = records
    return record.getMessage()


def test_report_wording():
    one = {"oversize": ("/x/huge.png", "13300x13300 px, over the 40 Mpx limit")}
    assert describe_skips("train", {"unreadable": 0, "oversize": 1}, one) == (
        "skipped 1 oversize image this train epoch (e.g. /x/huge.png: 13300x13300 px, over the 40 Mpx limit)"
    )
    assert describe_skips("validation", {"unreadable": 2, "oversize": 0}, {}) == (
        "skipped 2 unreadable images this validation epoch"
    )


def test_old_style_batches_count_as_unreadable():
    report = SkippedImagesReport()
    report._add("train", {"num_skipped": 3, "skipped_paths": ["a.jpg"]})  # None samples, no reasons
    assert report.counts["train"] == {UNREADABLE: 3, OVERSIZE: 0}
    assert report.examples["train"] == {UNREADABLE: ("a.jpg", "")}


# -- conversions: same results as the old float64 formulas, without float64 full-size copies -----


def _old_sixteen_bit(values: np.ndarray) -> np.ndarray:
    return np.round(values.astype(np.float64) / 257.0).astype(np.uint8)


def _old_int32(values: np.ndarray) -> np.ndarray:
    values = values.astype(np.int64)
    lo, hi = int(values.min()), int(values.max())
    if lo >= 0 and hi <= 255:
        return values.astype(np.uint8)
    if lo >= 0 and hi <= 65535:
        return np.round(values / 257.0).astype(np.uint8)
    return np.round((values - lo) * (255.0 / max(hi - lo, 1))).astype(np.uint8)


def _old_float(values: np.ndarray) -> np.ndarray:
    values = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0)
    if values.size and values.min() >= 0.0 and values.max() <= 1.0:
        values = values * 255.0
    return np.round(np.clip(values, 0.0, 255.0)).astype(np.uint8)


def _grey(img: Image.Image) -> np.ndarray:
    rgb = np.asarray(to_rgb(img))
    assert (rgb == rgb[..., :1]).all()
    return rgb[..., 0]


def test_sixteen_bit_matches_the_old_float_path_on_every_value():
    # 2048 x 1024 = 2 Mpx: every 16-bit value 32 times, and more than one block of rows.
    values = np.tile(np.arange(65536, dtype=np.uint16).reshape(64, 1024), (32, 1))
    expected = _old_sixteen_bit(values)
    assert np.array_equal(_grey(Image.fromarray(values)), expected)  # I;16
    big_endian = Image.frombytes("I;16B", (1024, 2048), values.astype(">u2").tobytes())
    assert np.array_equal(_grey(big_endian), expected)
    as_int32 = values.astype(np.int32)  # mode I holding 16-bit data (old PIL PNG loading)
    assert np.array_equal(_grey(Image.fromarray(as_int32, mode="I")), expected)


@pytest.mark.parametrize("case", ["8-bit", "min-max", "full int32", "negative"])
def test_int32_matches_the_old_float_path(case):
    rng = np.random.default_rng(0)
    values = {
        "8-bit": np.arange(256, dtype=np.int32).reshape(16, 16),
        "min-max": rng.integers(0, 10**6, (1100, 1000), dtype=np.int32),
        "full int32": np.concatenate([
            np.array([np.iinfo(np.int32).min, np.iinfo(np.int32).max], dtype=np.int32),
            rng.integers(np.iinfo(np.int32).min, np.iinfo(np.int32).max, 999_998, dtype=np.int32),
        ]).reshape(1000, 1000),
        "negative": np.arange(-500, 500, dtype=np.int32).reshape(10, 100),
    }[case]  # fmt: skip
    assert np.array_equal(_grey(Image.fromarray(values, mode="I")), _old_int32(values))


@pytest.mark.parametrize("case", ["unit", "wide", "special"])
def test_float_matches_the_old_float64_path(case):
    rng = np.random.default_rng(1)
    unit_grid = np.linspace(0.0, 1.0, 1100 * 1000, dtype=np.float32).reshape(1100, 1000)
    special = rng.uniform(-10, 300, (300, 400)).astype(np.float32)
    special.flat[::7] = np.nan
    special.flat[1::11] = np.inf
    special.flat[2::13] = -np.inf
    values = {
        "unit": unit_grid,  # scaled by 255; a dense grid crosses every rounding boundary
        "wide": rng.uniform(-1e6, 1e6, (1100, 1000)).astype(np.float32),
        "special": special,
    }[case]
    assert np.array_equal(_grey(Image.fromarray(values, mode="F")), _old_float(values))
    unit_with_nan = unit_grid[-10:].copy()
    unit_with_nan[0, 0] = np.nan  # NaN → 0 keeps the [0, 1] rule
    assert _grey(Image.fromarray(unit_with_nan, mode="F"))[-1, -1] == 255


# -- peak memory, in a fresh process -----------------------------------------------------------

_PEAK_SCRIPT = """
import json, sys
from taming.data.base import ImagePaths
from taming.data.folder import ImageFolder
from taming.data.transforms import ImageTransform

def peak_kb():
    # VmHWM: this process image's peak RSS. (ru_maxrss would carry over the size of the pytest process
    # this one was forked from: Linux keeps it across exec.)
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))

root, name, max_pixels = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
if max_pixels == "folder":  # the real path: an ImageFolder with the default limit
    ds = ImageFolder(root=root, size=32)
else:
    ds = ImagePaths(paths=[root + "/" + name], transform=ImageTransform(size=32),
                    check_readable=False, max_pixels=max_pixels)
before = peak_kb()
sample = ds[[p.rsplit("/", 1)[-1] for p in ds.paths].index(name)]
out = {"before_kb": before, "peak_kb": peak_kb()}
if isinstance(sample, dict):
    out["shape"] = list(sample["image"].shape)
else:
    out.update(reason=sample.reason, detail=sample.detail)
print(json.dumps(out))
"""


def _peak_run(root: Path, name: str, max_pixels: object) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT, str(root), name, json.dumps(max_pixels)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_huge_16_bit_png_is_skipped_in_bounded_memory(huge_png):
    write_jpeg(str(huge_png.parent / "small.jpg"))  # the folder must have one usable image
    out = _peak_run(huge_png.parent, "huge.png", "folder")
    assert out["reason"] == OVERSIZE and out["detail"] == "169 Mpx, over the 40 Mpx limit"
    assert out["peak_kb"] < 600 * 1024, out  # the old float64 path took > 3 GB


@pytest.mark.slow
def test_sixteen_bit_decoding_uses_integer_memory(tmp_path):
    """4000x4000 16-bit under the limit: ~7 bytes per pixel (decoded 2 + uint8 1 + PIL RGB 4);
    the old float64 conversion needed ~18."""
    (tmp_path / "grey16.png").write_bytes(zero_png(4000, 4000, bit_depth=16))
    out = _peak_run(tmp_path, "grey16.png", None)
    assert out["shape"] == [3, 32, 32]
    assert (out["peak_kb"] - out["before_kb"]) * 1024 < 10 * 4000 * 4000, out


def test_zero_png_helper_is_a_valid_png():
    img = Image.open(io.BytesIO(zero_png(5, 3, bit_depth=16)))
    assert img.size == (5, 3) and img.mode.startswith("I;16") and not np.asarray(img).any()
