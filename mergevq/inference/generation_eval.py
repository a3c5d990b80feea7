"""Generation metrics (gFID, KID, precision/recall, IS) of a sample set against a reference (DESIGN §6).

Inputs:
- SAMPLES: an ADM-layout ``.npz`` (``arr_0`` (N, H, W, 3) uint8; what ``mergevq sample`` and
  guided-diffusion write) or a folder of images (searched recursively; unreadable files are skipped
  and counted).
- REF: an ADM reference batch ``.npz`` holding ``mu`` / ``sigma`` (FID statistics) and/or ``arr_0``
  images, or a folder of images.

Features: :class:`mergevq.metrics.fid.InceptionFeatures` (torch-fidelity's ``inception-v3-compat``),
computed on the device in batches, each rank on its contiguous shard of the images, gathered in
rank order, so N ranks give the features of one process. The metrics are torch-fidelity's
functions (:mod:`mergevq.metrics.fid`) on those features.

Comparability with ADM reference batches: guided-diffusion's evaluator computes ``mu`` / ``sigma``
from the 2048-d ``pool_3`` features of the TensorFlow FID Inception graph (2015-12-05), the graph
that torch-fidelity's ``inception-v3-compat`` ports layer by layer (including TF1's bilinear resize
to 299 px), and the weights of ``mergevq prepare-weights`` are that graph. Sample features here are
therefore the same 2048-d pool3 features the reference statistics were computed from, and FID
against an ADM ``.npz`` is comparable with published numbers. With any other Inception file
(``--inception``), statistics stored in a reference file no longer match the sample features;
give a REF with images instead.

Rules:
- FID uses REF's stored ``mu`` / ``sigma`` when it has them (as guided-diffusion's evaluator does),
  else the statistics of REF's image features.
- KID and precision/recall need REF image features: with a statistics-only REF they are skipped and
  ``notes`` says why.
- Inception Score needs the 1008-way classifier (``inception_score=True``, weights loaded with
  ``has_classifier=True``; the offline weights from ``prepare-weights`` have none, and
  :mod:`mergevq.pretrained` refuses logits from them).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from mergevq.distributed import DistContext, all_reduce_sum, gather_rows, shard
from mergevq.errors import ConfigError
from mergevq.fileio import atomic_write
from mergevq.inference.adm_npz import member_names, read_member
from mergevq.inference.progress import progress_bar, track
from mergevq.metrics.fid import (
    FeatureStats,
    InceptionFeatures,
    feature_stats,
    fid_from_stats,
    inception_score,
    kid_from_features,
    precision_recall,
)

__all__ = [
    "COMMAND",
    "Features",
    "GenerationMetrics",
    "ImageArray",
    "ImageFiles",
    "MetricSettings",
    "PixelBatch",
    "Reference",
    "evaluate_generation",
    "extract_features",
    "generation_metrics",
    "load_images",
    "load_reference",
]

COMMAND = "evaluate-generation"  # recorded in the metrics JSON
POOL_DIM = 2048  # Inception pool3, the features ADM's mu / sigma are computed from
LOGITS_DIM = 1008


# --------------------------------------------------------------------------------------------------
# Image sources


@dataclass(frozen=True)
class PixelBatch:
    """Consecutive readable images of one size, and how many unreadable files were passed over."""

    pixels: np.ndarray  # (B, H, W, 3) uint8, B may be 0
    skipped: int


class ImageArray:
    """Images held in one (N, H, W, 3) uint8 array, e.g. ``arr_0`` of an ``.npz`` (memory-mapped)."""

    def __init__(self, *, pixels: np.ndarray, path: str, member: str) -> None:
        if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[-1] != 3:
            raise ConfigError(f"{path}: expected {member} to hold (N, H, W, 3) uint8 images, got {pixels.dtype} "
                              f"{tuple(pixels.shape)}")
        self.pixels = pixels
        self.path = path

    def __len__(self) -> int:
        return int(self.pixels.shape[0])

    def batches(self, rows: range, *, batch_size: int) -> Iterator[PixelBatch]:
        for start in range(rows.start, rows.stop, batch_size):
            stop = min(start + batch_size, rows.stop)
            # a copy: the array may be a read-only memory map, which torch cannot wrap
            yield PixelBatch(pixels=np.array(self.pixels[start:stop]), skipped=0)


class ImageFiles:
    """The image files under a folder (recursive, sorted; hidden files ignored)."""

    def __init__(self, *, root: Path, files: tuple[str, ...]) -> None:
        self.root = root
        self.files = files
        self.path = str(root)

    @classmethod
    def scan(cls, root: str | os.PathLike) -> ImageFiles:
        from taming.data.folder import DEFAULT_EXTENSIONS, scan_images

        root = Path(root)
        files = tuple(scan_images(str(root), DEFAULT_EXTENSIONS))
        if not files:
            raise ConfigError(f"{root} holds no image files ({', '.join(DEFAULT_EXTENSIONS)})")
        return cls(root=root, files=files)

    def __len__(self) -> int:
        return len(self.files)

    def batches(self, rows: range, *, batch_size: int) -> Iterator[PixelBatch]:
        """Batches of up to ``batch_size`` images; a batch also ends where the image size changes
        (the Inception resizes each image to 299 px itself, so mixed sizes are fine)."""
        from taming.data.image_io import load_rgb

        pending: list[np.ndarray] = []
        skipped = 0
        for row in rows:
            image = load_rgb(self.root / self.files[row])
            if image is None:
                skipped += 1
                continue
            pixels = np.asarray(image, dtype=np.uint8)
            if pending and (len(pending) == batch_size or pixels.shape != pending[0].shape):
                yield PixelBatch(pixels=np.stack(pending), skipped=skipped)
                pending, skipped = [], 0
            pending.append(pixels)
        if pending or skipped:
            stacked = np.stack(pending) if pending else np.zeros((0, 1, 1, 3), dtype=np.uint8)
            yield PixelBatch(pixels=stacked, skipped=skipped)


def load_images(path: str | os.PathLike) -> ImageArray | ImageFiles:
    """SAMPLES: an ``.npz`` with ``arr_0`` (N, H, W, 3) uint8, or a folder of images."""
    path = Path(path)
    if path.is_dir():
        return ImageFiles.scan(path)
    if path.suffix == ".npz":
        return ImageArray(pixels=read_member(path, "arr_0"), path=str(path), member="arr_0")
    raise ConfigError(f"{path}: expected an .npz with arr_0 (N, H, W, 3) uint8 or a folder of images")


@dataclass(frozen=True)
class Reference:
    """What a REF provides: images to extract features from, stored FID statistics, or both."""

    path: str
    images: ImageArray | ImageFiles | None
    stats: FeatureStats | None


def _stored_stats(path: Path, count: int) -> FeatureStats:
    mu = np.asarray(read_member(path, "mu"))
    sigma = np.asarray(read_member(path, "sigma"))
    if mu.shape != (POOL_DIM,) or sigma.shape != (POOL_DIM, POOL_DIM):
        raise ConfigError(f"{path}: mu {mu.shape} / sigma {sigma.shape} are not Inception pool3 statistics "
                          f"(expected ({POOL_DIM},) and ({POOL_DIM}, {POOL_DIM}))")
    return FeatureStats(mu=mu, sigma=sigma, count=count)


def load_reference(path: str | os.PathLike) -> Reference:
    """REF: an ADM reference batch ``.npz`` (``mu`` + ``sigma`` and/or ``arr_0``) or a folder.
    Stored statistics get ``count`` = the number of ``arr_0`` images, 0 when the file has none."""
    path = Path(path)
    if path.is_dir():
        return Reference(path=str(path), images=ImageFiles.scan(path), stats=None)
    if path.suffix != ".npz":
        raise ConfigError(f"{path}: expected an ADM reference .npz (mu/sigma and/or arr_0) or a folder of images")
    names = set(member_names(path))
    images = ImageArray(pixels=read_member(path, "arr_0"), path=str(path), member="arr_0") if "arr_0" in names else None
    has_stats = {"mu", "sigma"} <= names
    if images is None and not has_stats:
        raise ConfigError(f"{path} holds neither mu + sigma nor arr_0 images (it holds: "
                          f"{', '.join(sorted(names)) or 'nothing'})")
    stats = _stored_stats(path, len(images) if images is not None else 0) if has_stats else None
    return Reference(path=str(path), images=images, stats=stats)


# --------------------------------------------------------------------------------------------------
# Features


@dataclass(frozen=True)
class Features:
    """Inception outputs of every readable image of a source, in source order (on every rank)."""

    pool: torch.Tensor  # (N, 2048) float32
    logits: torch.Tensor | None  # (N, 1008) float32 when the Inception has the classifier and logits were asked for
    skipped: int  # unreadable files passed over (all ranks)

    @property
    def count(self) -> int:
        return int(self.pool.shape[0])


@torch.no_grad()
def extract_features(images: ImageArray | ImageFiles, *, inception: InceptionFeatures, device: torch.device,
                     batch_size: int, ctx: DistContext, desc: str = "Inception features") -> Features:
    """Features of ``images``: this rank's contiguous shard, batched on ``device``, then gathered.
    ``desc`` labels rank 0's progress bar."""
    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size} must be >= 1")
    rows = shard(len(images), rank=ctx.rank, world_size=ctx.world_size)
    pools = [torch.zeros((0, POOL_DIM), device=device)]
    logits = [torch.zeros((0, LOGITS_DIM), device=device)]
    skipped = 0
    bar = progress_bar(total=len(rows), desc=desc, unit="img", is_main=ctx.is_main)
    for batch in track(images.batches(rows, batch_size=batch_size), bar,
                       count=lambda b: b.skipped + int(b.pixels.shape[0])):
        skipped += batch.skipped
        if batch.pixels.shape[0] == 0:
            continue
        x = torch.from_numpy(batch.pixels).to(device).permute(0, 3, 1, 2)  # (B, H, W, 3) -> (B, 3, H, W)
        out = inception(x)
        if inception.with_logits:
            pools.append(out[0].float())
            logits.append(out[1].float())
        else:
            pools.append(out.float())
    total_skipped = int(all_reduce_sum(torch.tensor([skipped], device=device)).item())
    pool = gather_rows(torch.cat(pools))
    all_logits = gather_rows(torch.cat(logits)) if inception.with_logits else None
    return Features(pool=pool, logits=all_logits, skipped=total_skipped)


# --------------------------------------------------------------------------------------------------
# Metrics


@dataclass(frozen=True)
class MetricSettings:
    """torch-fidelity's defaults, except that the KID subset size is capped at the smaller set."""

    kid_subsets: int = 100
    kid_subset_size: int = 1000
    pr_neighborhood: int = 3
    is_splits: int = 10


@dataclass(frozen=True)
class GenerationMetrics:
    """The numbers of one SAMPLES vs REF evaluation. A metric that could not be computed is None
    and ``notes`` says why."""

    samples: str
    reference: str
    num_samples: int
    samples_skipped: int
    num_reference_images: int  # 0 when REF has statistics only
    reference_skipped: int
    fid: float
    fid_from_stored_stats: bool  # True: REF's own mu / sigma; False: statistics of REF's image features
    kid_mean: float | None
    kid_std: float | None
    precision: float | None
    recall: float | None
    inception_score_mean: float | None
    inception_score_std: float | None
    notes: tuple[str, ...]

    def to_dict(self) -> dict:
        out = asdict(self)
        out["notes"] = list(self.notes)
        return out

    def write_json(self, path: str | os.PathLike) -> Path:
        """The metrics as JSON, with ``"command"`` so that a re-run may replace the file
        (:func:`mergevq.outputs.check_output_file`)."""
        with atomic_write(path, text=True) as handle:
            json.dump({"command": COMMAND, **self.to_dict()}, handle, indent=2)
            handle.write("\n")
        return Path(path)


def generation_metrics(samples: Features, *, reference_features: Features | None,
                       reference_stats: FeatureStats | None, settings: MetricSettings,
                       samples_path: str, reference_path: str) -> GenerationMetrics:
    """The metrics from already extracted features (cheap; every rank may call it)."""
    if samples.count < 2:
        raise ConfigError(f"{samples_path}: {samples.count} readable image(s); FID needs at least 2")
    if reference_features is None and reference_stats is None:
        raise ValueError("generation_metrics needs reference features or statistics")
    if reference_features is not None and reference_features.count < 2 and reference_stats is None:
        raise ConfigError(f"{reference_path}: {reference_features.count} readable image(s); FID needs at least 2")
    notes: list[str] = []
    ref_stats = reference_stats if reference_stats is not None else feature_stats(reference_features.pool)
    fid = fid_from_stats(feature_stats(samples.pool), ref_stats)

    kid = (None, None)
    pr = (None, None)
    if reference_features is None:
        notes.append("KID and precision/recall skipped: the reference holds FID statistics (mu/sigma) only; "
                     "they need reference images (arr_0 or a folder)")
    else:
        smaller = min(samples.count, reference_features.count)
        if smaller >= 2:
            kid = kid_from_features(samples.pool, reference_features.pool, subsets=settings.kid_subsets,
                                    subset_size=settings.kid_subset_size)
        else:
            notes.append(f"KID skipped: it needs >= 2 images on each side, got {smaller}")
        if smaller > settings.pr_neighborhood:
            pr = precision_recall(samples.pool, reference_features.pool, neighborhood=settings.pr_neighborhood)
        else:
            notes.append(f"precision/recall skipped: it needs more than {settings.pr_neighborhood} images on "
                         f"each side (the k-NN radius), got {smaller}")
    isc = (None, None)
    if samples.logits is None:
        notes.append("Inception Score skipped: it needs Inception weights with the 1008-way classifier "
                     "(--inception FILE --inception-has-classifier); the prepare-weights file has none")
    else:
        isc = inception_score(samples.logits, splits=settings.is_splits)
    return GenerationMetrics(
        samples=samples_path, reference=reference_path, num_samples=samples.count, samples_skipped=samples.skipped,
        num_reference_images=0 if reference_features is None else reference_features.count,
        reference_skipped=0 if reference_features is None else reference_features.skipped,
        fid=fid, fid_from_stored_stats=reference_stats is not None, kid_mean=kid[0], kid_std=kid[1],
        precision=pr[0], recall=pr[1], inception_score_mean=isc[0], inception_score_std=isc[1], notes=tuple(notes),
    )


def evaluate_generation(samples: ImageArray | ImageFiles, reference: Reference, *, inception: InceptionFeatures,
                        device: torch.device, batch_size: int, ctx: DistContext,
                        settings: MetricSettings = MetricSettings()) -> GenerationMetrics:
    """SAMPLES (:func:`load_images`) vs REF (:func:`load_reference`): features of every rank's shard,
    gathered, then the metrics (identical on every rank)."""
    inception = inception.to(device)
    sample_features = extract_features(samples, inception=inception, device=device, batch_size=batch_size, ctx=ctx,
                                       desc="Inception features (samples)")
    ref_features = None
    if reference.images is not None:
        ref_features = extract_features(reference.images, inception=inception, device=device,
                                        batch_size=batch_size, ctx=ctx, desc="Inception features (reference)")
    return generation_metrics(sample_features, reference_features=ref_features, reference_stats=reference.stats,
                              settings=settings, samples_path=samples.path, reference_path=reference.path)
