"""The gFID path (issue 6 item 7): ADM-layout npz files and ``mergevq evaluate-generation``.

Invariants: FID of a sample folder against itself is ~0; an ADM reference npz built from a folder's
images (``arr_0``) gives exactly that folder's Inception features, and one holding only the
``mu`` / ``sigma`` of those features gives the folder-vs-folder FID; npz files round-trip through
the streaming writer and the memory-mapping reader; bad references are one-line errors.

Each FID costs a 2048 x 2048 matrix square root (~10 s on the shared CPU), so the file computes
three and checks everything else on features and statistics.
"""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from _distributed import run_ranks
from _eval_weights import write_random_inception
from PIL import Image

from mergevq.cli import main
from mergevq.distributed import DistContext
from mergevq.errors import ConfigError
from mergevq.inference.adm_npz import NpzMember, member_names, read_member, write_npz
from mergevq.inference.generation_eval import (
    MetricSettings,
    extract_features,
    generation_metrics,
    load_images,
    load_reference,
)
from mergevq.inference.tokenizer_eval import SINGLE_PROCESS
from mergevq.metrics.fid import InceptionFeatures, feature_stats
from mergevq.outputs import check_output_file

CPU = torch.device("cpu")


# --------------------------------------------------------------------------------------------------
# npz layout


def test_write_npz_round_trip_and_memory_map(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, size=(7, 5, 4, 3), dtype=np.uint8)
    labels = np.arange(7, dtype=np.int64) % 3
    path = write_npz(tmp_path / "s.npz", [
        NpzMember(name="arr_0", shape=images.shape, dtype=np.uint8, chunks=(images[:3], images[3:5], images[5:])),
        NpzMember(name="arr_1", shape=labels.shape, dtype=np.int64, chunks=(labels,)),
    ])
    with np.load(path) as loaded:  # what guided-diffusion's evaluator reads
        assert sorted(loaded.files) == ["arr_0", "arr_1"]
        np.testing.assert_array_equal(loaded["arr_0"], images)
        np.testing.assert_array_equal(loaded["arr_1"], labels)
    assert member_names(path) == ("arr_0", "arr_1")
    mapped = read_member(path, "arr_0")
    assert isinstance(mapped, np.memmap)  # not read into memory
    np.testing.assert_array_equal(mapped, images)
    assert not list(tmp_path.glob(".*tmp"))  # the atomic writer left nothing behind


def test_read_member_compressed_and_errors(tmp_path):
    mu = np.arange(4, dtype=np.float64)
    np.savez_compressed(tmp_path / "c.npz", mu=mu)
    np.testing.assert_array_equal(read_member(tmp_path / "c.npz", "mu"), mu)
    with pytest.raises(ConfigError, match=r"has no array 'sigma' \(it holds: mu\)"):
        read_member(tmp_path / "c.npz", "sigma")
    np.savez(tmp_path / "o.npz", arr_0=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ConfigError, match="holds Python objects"):
        read_member(tmp_path / "o.npz", "arr_0")
    with pytest.raises(ValueError, match="chunks hold 12 bytes"):
        write_npz(tmp_path / "bad.npz", [NpzMember(name="arr_0", shape=(2, 3), dtype=np.uint8,
                                                   chunks=(np.zeros((4, 3), np.uint8),))])
    assert not (tmp_path / "bad.npz").exists()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.write_text("not a zip"), "is not a readable .npz file"),
        (lambda p: np.savez(p, labels=np.zeros(3)), "holds neither mu \\+ sigma nor arr_0 images"),
        (lambda p: np.savez(p, mu=np.zeros(5), sigma=np.eye(5)), "are not Inception pool3 statistics"),
        (lambda p: np.savez(p, arr_0=np.zeros((2, 8, 8), np.uint8)), "expected arr_0 to hold \\(N, H, W, 3\\) uint8 images"),
        (lambda p: None, "not found"),
    ],
    ids=["not_zip", "no_members", "wrong_width", "grey_images", "missing"],
)
def test_bad_reference_is_one_line_error(tmp_path, make, message):
    ref = tmp_path / "ref.npz"
    make(ref)
    with pytest.raises(ConfigError, match=message) as err:
        load_reference(ref)
    assert "\n" not in str(err.value)


def test_cli_bad_ref_prints_one_line(tmp_path, capsys):
    samples = _write_pngs(tmp_path / "samples", _photo_crops(seed=0, count=2))
    ref = tmp_path / "ref.npz"
    ref.write_bytes(b"PK garbage")
    # the inputs are checked before the (here missing) Inception weights are read
    code = main(["evaluate-generation", str(samples), "--ref", str(ref), "--inception", str(tmp_path / "none.pth")])
    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mergevq evaluate-generation: error:"), lines
    assert f"{ref} is not a readable .npz file" in lines[0]


# --------------------------------------------------------------------------------------------------
# Metrics against folders and ADM reference batches


def _photo_crops(*, seed: int, count: int, size: int = 32) -> np.ndarray:
    """(count, size, size, 3) uint8 crops of scikit-image's photos (real image statistics)."""
    from skimage import data as photos

    sources = [photos.astronaut(), photos.chelsea(), photos.coffee(), photos.rocket()]
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        image = sources[(i + seed) % len(sources)]
        y = int(rng.integers(0, image.shape[0] - 96))
        x = int(rng.integers(0, image.shape[1] - 96))
        out.append(np.asarray(Image.fromarray(image[y:y + 96, x:x + 96]).resize((size, size))))
    return np.stack(out)


def _write_pngs(folder: Path, images: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:06d}.png")
    return folder


@pytest.fixture(scope="module")
def gen_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen_eval")
    inception_path = write_random_inception(root / "inception.pth", seed=0)
    samples = _photo_crops(seed=1, count=4)
    reference = _photo_crops(seed=2, count=4)
    samples_dir = _write_pngs(root / "samples", samples)
    reference_dir = _write_pngs(root / "reference", reference)
    inception = InceptionFeatures.load(path=inception_path)
    return {"root": root, "inception_path": inception_path, "inception": inception, "samples_dir": samples_dir,
            "reference_dir": reference_dir, "reference": reference}


def test_cli_fid_of_folder_against_itself_is_zero(gen_setup, tmp_path, capsys):
    folder = tmp_path / "samples"
    _write_pngs(folder, np.asarray([np.asarray(Image.open(p)) for p in sorted(gen_setup["samples_dir"].iterdir())]))
    (folder / "broken.png").write_bytes(b"not an image")  # skipped and counted, not a crash
    out = tmp_path / "metrics.json"
    code = main(["evaluate-generation", str(folder), "--ref", str(folder), "--inception",
                 str(gen_setup["inception_path"]), "--accelerator", "cpu", "--batch-size", "4", "--out", str(out)])
    assert code == 0
    metrics = json.loads(out.read_text())
    assert abs(metrics["fid"]) < 1e-2, metrics
    assert metrics["num_samples"] == 4 and metrics["samples_skipped"] == 1
    assert metrics["num_reference_images"] == 4 and metrics["reference_skipped"] == 1
    assert metrics["fid_from_stored_stats"] is False
    assert metrics["precision"] == 1.0 and metrics["recall"] == 1.0  # every sample is its own neighbour
    # KID's unbiased estimator is not 0 for a set against itself (it leaves out only k(x, x) within
    # a set), so only its presence is checked here
    assert np.isfinite(metrics["kid_mean"]) and np.isfinite(metrics["kid_std"])
    assert metrics["inception_score_mean"] is None and any("Inception Score" in n for n in metrics["notes"])
    printed = capsys.readouterr().out
    assert "FID:" in printed and "4 images (1 unreadable skipped)" in printed
    assert metrics["command"] == "evaluate-generation"

    # issue 11: its own earlier result may be replaced (a full re-run costs another FID: the check
    # that decides it is enough); a folder or a file it did not write is refused in one line,
    # before any work, and left untouched
    assert check_output_file(out, command="evaluate-generation") == out
    capsys.readouterr()
    foreign = tmp_path / "theirs.json"
    foreign.write_text('{"fid": 1.0}')
    for target, message in ((foreign, "was not written by mergevq evaluate-generation"),
                            (folder, "expected a file name, but it is a folder")):
        before = _mtimes(target)
        # the missing Inception file shows the refusal comes first
        assert main(["evaluate-generation", str(folder), "--ref", str(folder), "--inception",
                     str(tmp_path / "none.pth"), "--out", str(target)]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], lines
        assert _mtimes(target) == before


def _mtimes(path: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in [path, *(path.iterdir() if path.is_dir() else ())]}


def test_adm_reference_npz_equals_folder(gen_setup, tmp_path):
    inception = gen_setup["inception"]
    folder_features = extract_features(load_images(gen_setup["reference_dir"]), inception=inception, device=CPU,
                                       batch_size=4, ctx=SINGLE_PROCESS)

    # images form: arr_0 of the same pixels gives the same features, bit for bit (PNG is lossless),
    # in any batch size, so every metric computed from them is the folder's
    images_npz = tmp_path / "ref_images.npz"
    np.savez(images_npz, arr_0=gen_setup["reference"])
    ref = load_reference(images_npz)
    assert ref.stats is None and ref.images is not None
    npz_features = extract_features(ref.images, inception=inception, device=CPU, batch_size=3, ctx=SINGLE_PROCESS)
    assert torch.equal(npz_features.pool, folder_features.pool)

    # statistics form: mu / sigma of those features (float64, as ADM's files store them)
    stats = feature_stats(folder_features.pool)
    stats_npz = tmp_path / "ref_stats.npz"
    np.savez(stats_npz, mu=stats.mu.astype(np.float64), sigma=stats.sigma.astype(np.float64))

    # the metrics from the features (the CLI test above runs the whole path end to end)
    sample_features = extract_features(load_images(gen_setup["samples_dir"]), inception=inception, device=CPU,
                                       batch_size=4, ctx=SINGLE_PROCESS)
    common = {"settings": MetricSettings(), "samples_path": "samples", "reference_path": "ref"}
    by_folder = generation_metrics(sample_features, reference_features=folder_features, reference_stats=None,
                                   **common)
    by_stats = generation_metrics(sample_features, reference_features=None,
                                  reference_stats=load_reference(stats_npz).stats, **common)
    assert by_folder.fid > 1.0  # different photos: the stand-in Inception tells them apart
    assert by_stats.fid_from_stored_stats and not by_folder.fid_from_stored_stats
    assert by_stats.fid == pytest.approx(by_folder.fid, rel=1e-5)
    assert by_folder.kid_mean is not None and by_folder.precision is not None
    assert by_stats.kid_mean is None and by_stats.precision is None  # they need reference images
    assert any("mu/sigma" in note for note in by_stats.notes)


def test_samples_npz_reads_like_folder(gen_setup, tmp_path):
    """SAMPLES as the ADM npz ``mergevq sample`` writes (arr_0 + arr_1 labels) reads like the folder."""
    pixels = np.stack([np.asarray(Image.open(p)) for p in sorted(gen_setup["samples_dir"].iterdir())])
    path = write_npz(tmp_path / "samples.npz", [
        NpzMember(name="arr_0", shape=pixels.shape, dtype=np.uint8, chunks=(pixels,)),
        NpzMember(name="arr_1", shape=(len(pixels),), dtype=np.int64, chunks=(np.zeros(len(pixels), np.int64),)),
    ])
    source = load_images(path)
    assert len(source) == 4
    batch = next(source.batches(range(2, 5), batch_size=8))
    np.testing.assert_array_equal(batch.pixels, pixels[2:5])
    with zipfile.ZipFile(path) as archive:  # uncompressed, so readers can memory-map it
        assert all(info.compress_type == zipfile.ZIP_STORED for info in archive.infolist())


def test_classifier_weights_add_logits_for_inception_score(gen_setup, tmp_path):
    """With ``--inception-has-classifier`` the same pass also yields the 1008-way logits IS needs,
    and the pool features are unchanged."""
    np.savez(tmp_path / "s.npz", arr_0=gen_setup["reference"][:2])
    source = load_images(tmp_path / "s.npz")
    with_logits = InceptionFeatures.load(path=gen_setup["inception_path"], has_classifier=True, with_logits=True)
    both = extract_features(source, inception=with_logits, device=CPU, batch_size=1, ctx=SINGLE_PROCESS)
    plain = extract_features(source, inception=gen_setup["inception"], device=CPU, batch_size=2, ctx=SINGLE_PROCESS)
    assert both.logits is not None and both.logits.shape == (2, 1008) and plain.logits is None
    torch.testing.assert_close(both.pool, plain.pool)


def _features_worker(rank, world, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        root = Path(out_dir)
        inception = InceptionFeatures.load(path=root / "inception.pth")
        features = extract_features(load_images(root / "images"), inception=inception, device=CPU, batch_size=2,
                                    ctx=DistContext(rank=rank, world_size=world, local_rank=rank))
        torch.save({"pool": features.pool, "skipped": features.skipped}, root / f"rank{rank}.pt")
        dist.barrier()  # all ranks done before any tears the group down (gloo aborts a rank whose peer left)
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_two_processes_extract_the_features_of_one(gen_setup, tmp_path):
    """3 readable images + 1 broken file on 2 ranks (2 files each; rank 1's first is the broken one, so
    it contributes 1 image): every rank ends with the single-process features in file order and the
    total skip count."""
    images = _write_pngs(tmp_path / "images", gen_setup["reference"][:3])
    (images / "000001_broken.png").write_bytes(b"not an image")  # sorts third: rank 1 skips it
    (tmp_path / "inception.pth").symlink_to(gen_setup["inception_path"])
    run_ranks(_features_worker, world=2, tmp_path=tmp_path, timeout_s=180, what="2-process feature extraction")
    single = extract_features(load_images(images), inception=gen_setup["inception"], device=CPU, batch_size=3,
                              ctx=SINGLE_PROCESS)
    assert single.count == 3 and single.skipped == 1
    for rank in range(2):
        out = torch.load(tmp_path / f"rank{rank}.pt")
        assert out["skipped"] == 1
        torch.testing.assert_close(out["pool"], single.pool)


@pytest.mark.parametrize(("extra", "message"), [
    (["eval.batch_size=0"], r"eval.batch_size=0: expected >= 1 \(--batch-size\)"),
    (["--kid-subset-size", "1"], r"eval.kid_subset_size=1: expected >= 2"),
    (["eval.ref=null"], r"eval.ref is not set: pass --ref REF"),
    (["--devices", "4"], r"--devices 4 \(eval.devices\) but 1 process\(es\) run on this node"),
    (["eval.batch_sise=4"], r"eval.batch_sise"),
], ids=["batch_key", "kid_flag", "no_ref", "devices", "typo"])
def test_cli_settings_are_config_keys(tmp_path, capsys, monkeypatch, extra, message):
    """issue 13: every option is a key of configs/evaluation/generation.yaml; a bad value is one line,
    before any input or weights are read."""
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    args = ["evaluate-generation", str(tmp_path / "missing"), *extra]
    if "eval.ref=null" not in extra:
        args += ["--ref", str(tmp_path / "missing_ref")]
    assert main(args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mergevq evaluate-generation: error:"), lines
    assert re.search(message, lines[0]), lines[0]
