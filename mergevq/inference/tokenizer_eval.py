"""The tokenizer evaluation pass: reconstruction metrics over a validation set for a sweep of kept-token
counts K (DESIGN §6, ``mergevq evaluate-tokenizer``).

For every image and every K: ``encode(x, K)`` -> ``decode_codes(codes, assign)`` (the exact merge
assignment), clamped to [-1, 1]. Per K it reports

* rFID: Fréchet distance between the Inception pool3 features of the originals and of the
  reconstructions (torch-fidelity's extractor and statistics, :mod:`mergevq.metrics.fid`; images
  are quantised to uint8 first, as a PNG would hold them). The originals' features are computed once
  and reused for every K;
* PSNR and SSIM per image, then averaged over images; LPIPS (VGG by default) per image, averaged;
* PSNR with the learned recovery (``decode(indices)``, the assignment predicted from the K codes)
  when the tokenizer has one, and that recovery's assignment accuracy: the fraction of the L
  positions whose predicted kept token is the true one, per image, then the mean (1 at K = L, where
  ``decode`` uses the identity assignment);
* codebook usage (fraction of the 2^d codes used over the whole set, one bincount per batch), the
  entropy of the code distribution in bits and its perplexity;
* the mean number of tokens actually kept: per image, the number of *distinct* codes among the K
  kept tokens (two kept tokens can quantise to the same code, so this is at most K), and the mean
  number of merge groups (distinct values of ``assign``, K by construction: a check);
* images/s of that K (encode, decode and every metric of it, all ranks together; an untimed
  warm-up on two images first keeps one-time costs out of the first K).

Throughput: images, per-image metric rows and features stay on the device for the whole pass
(one host transfer at the end). Several processes: each rank takes one contiguous shard of the data
(:func:`mergevq.distributed.shard`); per-image rows and features are concatenated in rank order
(:func:`~mergevq.distributed.gather_rows`) and the code histograms summed, so N ranks give the
numbers one process gives (up to float rounding of batched kernels). Every rank returns the same
result; the FIDs are computed on rank 0 and shared.

The demo calls it on in-memory images::

    result = evaluate_tokenizer(model, ImageTensorDataset(images), num_keep=[64, 36, 25],
                                inception=InceptionFeatures.load(), lpips=load_lpips("vgg"),
                                batch_size=50, device=torch.device("cpu"))
    print(result.markdown_table())
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from mergevq.distributed import DistContext, all_reduce_sum, gather_rows, shard
from mergevq.errors import ConfigError
from mergevq.metrics.codebook import CodeUsage
from mergevq.metrics.fid import InceptionFeatures, feature_stats, fid_from_stats
from mergevq.metrics.official_protocol import (
    OfficialProtocol,
    frechet_distance,
    official_feature_stats,
)
from mergevq.inference.progress import loader_items, progress_bar, track
from mergevq.metrics.recon import lpips_per_image, psnr_per_image, ssim_per_image
from mergevq.tokenizer.model import MergeVQ
from taming.data.base import collate_skip_none

__all__ = ["ImageTensorDataset", "KMetrics", "TokenizerEvaluation", "check_num_keep_list",
           "evaluate_tokenizer", "parse_num_keep"]

SINGLE_PROCESS = DistContext(rank=0, world_size=1, local_rank=0)

# columns of the per-image metric rows (one (n, len(_COLUMNS)) float32 tensor per K)
_COLUMNS = ("psnr", "ssim", "lpips", "psnr_learned", "distinct_codes", "groups", "recovery_accuracy")


class ImageTensorDataset(Dataset):
    """In-memory images as a data set: (N, 3, H, W) floats in [-1, 1] -> ``{"image", "index"}``."""

    def __init__(self, images: torch.Tensor) -> None:  # positional, like torch's TensorDataset
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"ImageTensorDataset expects (N, 3, H, W) images, got shape {tuple(images.shape)}")
        self.images = images

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> dict[str, object]:
        return {"image": self.images[index], "index": int(index)}


@dataclass(frozen=True)
class KMetrics:
    """The metrics of one K over the whole set (means over images unless said otherwise)."""

    num_keep: int
    rfid: float | None  # None: no Inception given
    psnr: float  # dB, mean of per-image PSNR
    psnr_std: float  # std over images
    ssim: float
    lpips: float | None  # None: no LPIPS network given
    psnr_learned_recovery: float | None  # None: the tokenizer has no learned recovery
    codebook_usage: float  # distinct codes over the set / 2^d
    unique_codes: int
    code_entropy_bits: float
    code_perplexity: float
    mean_tokens_kept: float  # distinct codes per image among the K kept tokens
    mean_merge_groups: float  # distinct assign values per image (= K)
    seconds: float  # mean over ranks of this K's time
    images_per_s: float  # all ranks together
    # eval.protocol official (None otherwise): the authors' batch PSNR / SSIM on truncated 8-bit images
    # and rFID on float images (mergevq/metrics/official_protocol.py)
    psnr_official: float | None = None
    ssim_official: float | None = None
    rfid_official: float | None = None
    # fraction of positions whose learned-recovery assignment is the true merge assignment (mean over
    # images); None: the tokenizer has no learned recovery
    recovery_accuracy: float | None = None


@dataclass(frozen=True)
class TokenizerEvaluation:
    """What :func:`evaluate_tokenizer` returns (the same on every rank)."""

    by_k: tuple[KMetrics, ...]
    num_images: int  # images evaluated (readable ones)
    num_skipped: int  # unreadable images skipped
    num_tokens: int  # L
    code_bits: int  # d
    resolution: tuple[int, int]
    world_size: int
    reference_seconds: float  # Inception features of the originals (mean over ranks; 0 without)
    total_seconds: float  # wall time of the whole pass on rank 0, data loading included
    sweep_images_per_s: float  # num_images x len(by_k) / total_seconds
    official_batch_size: int | None = None  # images per PSNR / SSIM group of the official protocol

    def to_dict(self) -> dict:
        out = asdict(self)
        out["by_k"] = [asdict(m) for m in self.by_k]
        out["resolution"] = list(self.resolution)
        return out

    def markdown_table(self) -> str:
        """One row per K: kept tokens, rFID, PSNR, SSIM, LPIPS, learned-recovery PSNR, usage, images/s."""
        header = ("| K | tokens kept (distinct codes) | rFID | PSNR (dB) | SSIM | LPIPS | PSNR learned rec. (dB) "
                  "| codebook usage | code entropy (bits) | images/s |")
        rule = "|" + "---:|" * (header.count("|") - 1)
        rows = [header, rule]
        for m in self.by_k:
            rows.append("| " + " | ".join([
                str(m.num_keep), f"{m.mean_tokens_kept:.1f}", _fmt(m.rfid, ".3f"), f"{m.psnr:.2f}",
                f"{m.ssim:.4f}", _fmt(m.lpips, ".4f"), _fmt(m.psnr_learned_recovery, ".2f"),
                f"{100 * m.codebook_usage:.3f}%", f"{m.code_entropy_bits:.2f}", f"{m.images_per_s:.1f}",
            ]) + " |")
        return "\n".join(rows)

    def official_table(self) -> str:
        """The official protocol's numbers, one row per K ("" when it was not computed)."""
        if self.official_batch_size is None:
            return ""
        rows = ["| K | rFID (official) | PSNR (official, dB) | SSIM (official) |", "|---:|---:|---:|---:|"]
        for m in self.by_k:
            rows.append(f"| {m.num_keep} | {_fmt(m.rfid_official, '.3f')} | {m.psnr_official:.2f} | "
                        f"{m.ssim_official:.4f} |")
        return "\n".join(rows)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def parse_num_keep(text: str | int | Sequence[int]) -> list[int]:
    """``"256,196,144"`` / ``[256, 196]`` / ``144`` -> [256, 196, 144] (order kept, duplicates
    dropped); anything else is a one-line ConfigError."""
    if isinstance(text, bool):
        raise ConfigError(f"num_keep={text!r} is not a list of kept-token counts like 256,196,144")
    if isinstance(text, int):
        items: list = [text]
    elif isinstance(text, str):
        items = [part.strip() for part in text.split(",") if part.strip()]
    else:
        items = list(text)
    values = []
    for item in items:
        try:
            if isinstance(item, bool) or (isinstance(item, float) and not item.is_integer()):
                raise ValueError
            values.append(int(item))
        except (TypeError, ValueError):
            raise ConfigError(f"num_keep={text!r}: {item!r} is not an integer; expected a list like 256,196,144") from None
    if not values:
        raise ConfigError(f"num_keep={text!r} is empty; expected a list like 256,196,144")
    return list(dict.fromkeys(values))


def check_num_keep_list(model: MergeVQ, num_keep: Sequence[int]) -> list[int]:
    """Every K must lie in [1, L] and be reachable by the merge schedule; one-line ConfigError naming
    the bad K and the model's L otherwise (checked before any image is processed)."""
    ks = parse_num_keep(num_keep)
    for k in ks:
        try:
            model.check_num_keep(k)
        except ConfigError as err:
            raise ConfigError(f"{err} (this tokenizer has L={model.num_tokens} tokens per image; "
                              f"pass kept-token counts in [1, {model.num_tokens}])") from None
    return ks


def _synchronize(device: torch.device) -> None:
    """Wait for queued kernels, so per-K wall times measure the work of that K."""
    if device.type != "cpu":
        torch.accelerator.synchronize(device)


def _warm_up(model: MergeVQ, x: torch.Tensor, k: int, *, inception: nn.Module | None, lpips: nn.Module | None,
             autocast: contextlib.AbstractContextManager) -> None:
    """One untimed pass over two images, so one-time costs (lazy imports, kernel selection, memory
    pools) do not land in the first K's images/s."""
    with autocast:
        enc = model.encode(x, k)
        rec = model.decode_codes(enc.codes, enc.assign).float().clamp(-1, 1)
    ssim_per_image(rec, x)
    if lpips is not None:
        lpips_per_image(lpips, rec, x)
    if inception is not None:
        inception(rec)


def _learned_assign(model: MergeVQ, indices: torch.Tensor) -> torch.Tensor:
    """(B, K) indices -> (B, L) the assignment ``model.decode(indices)`` would use: the identity at
    K = L (nothing was merged), else the learned recovery's prediction."""
    if indices.shape[1] == model.num_tokens:
        return torch.arange(model.num_tokens, device=indices.device).expand(indices.shape[0], -1)
    codes = model.quantizer.indices_to_codes(indices, dtype=next(model.decoder.parameters()).dtype)
    return model.predict_assign(codes)


def _distinct_per_row(values: torch.Tensor) -> torch.Tensor:
    """(B, N) integers -> (B,) number of distinct values per row (sort, count changes)."""
    ordered = values.sort(dim=1).values
    return (ordered[:, 1:] != ordered[:, :-1]).sum(dim=1) + 1


@dataclass
class _KAccumulator:
    """Per-rank state of one K during the pass (rows and features stay on the device)."""

    rows: list[torch.Tensor]
    features: list[torch.Tensor]
    usage: CodeUsage
    seconds: float = 0.0
    official_rows: list[torch.Tensor] = field(default_factory=list)  # (b, 2): 8-bit MSE, SSIM
    official_features: list[torch.Tensor] = field(default_factory=list)


@torch.no_grad()
def evaluate_tokenizer(
    model: MergeVQ,
    dataset: Dataset,
    *,
    num_keep: Sequence[int],
    inception: InceptionFeatures | None,
    lpips: nn.Module | None,
    batch_size: int,
    device: torch.device,
    context: DistContext = SINGLE_PROCESS,
    autocast_dtype: torch.dtype | None = None,
    num_workers: int = 0,
    official: OfficialProtocol | None = None,
) -> TokenizerEvaluation:
    """Evaluate ``model`` on ``dataset`` (items ``{"image": (3, H, W) in [-1, 1], ...}``; unreadable
    items skipped and counted) at every K of ``num_keep``; see the module docstring.

    ``inception`` / ``lpips`` None: rFID / LPIPS are not computed (None in the result). ``model``,
    ``inception`` and ``lpips`` must already be on ``device``. ``autocast_dtype`` (bf16 / fp16):
    the tokenizer runs under autocast; every metric is computed in float32. Under torch.distributed,
    ``context`` says which shard this rank evaluates; every rank must call this with the same
    arguments. ``official``: also the authors' PSNR / SSIM / rFID (``eval.protocol: official``), from
    the same reconstructions."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    ks = check_num_keep_list(model, num_keep)
    start = time.perf_counter()
    part = shard(len(dataset), rank=context.rank, world_size=context.world_size)
    loader = DataLoader(Subset(dataset, part), batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate_skip_none, pin_memory=device.type == "cuda")
    codebook = model.quantizer.codebook_size
    learned = model.recovery is not None
    acc = {k: _KAccumulator(rows=[], features=[], usage=CodeUsage(num_codes=codebook, device=device)) for k in ks}
    reference: list[torch.Tensor] = []
    official_reference: list[torch.Tensor] = []
    official_inception = official.inception if official is not None else None
    reference_seconds = 0.0
    skipped = 0
    size = (model.config.image_size, model.config.image_size)
    autocast = (torch.autocast(device_type=device.type, dtype=autocast_dtype) if autocast_dtype is not None
                else contextlib.nullcontext())
    bar = progress_bar(total=len(part), desc="evaluate-tokenizer", unit="img", is_main=context.is_main)
    for batch in track(loader, bar, count=loader_items):
        skipped += int(batch["num_skipped"])
        if "image" not in batch:  # every image of this batch was unreadable
            continue
        x = batch["image"].to(device, non_blocking=True).float()  # (B, 3, H, W)
        if tuple(x.shape[-2:]) != size:
            raise ConfigError(f"the data gives {tuple(x.shape[-2:])} images but the tokenizer takes {size} "
                              f"(its decoder grid is fixed); set the data resolution to {size[0]}")
        if not reference and not acc[ks[0]].rows:  # first batch of this rank
            _warm_up(model, x[:2], ks[0], inception=inception, lpips=lpips, autocast=autocast)
            _synchronize(device)
        if inception is not None:
            tick = time.perf_counter()
            reference.append(inception(x).float())  # (B, D): 2048 for pool3
            _synchronize(device)
            reference_seconds += time.perf_counter() - tick
        if official_inception is not None:
            official_reference.append(official_inception(x).float())
        for k in ks:
            tick = time.perf_counter()
            with autocast:
                enc = model.encode(x, k)
                rec = model.decode_codes(enc.codes, enc.assign)
                learned_assign = _learned_assign(model, enc.indices) if learned else None
                rec_learned = model.decode(enc.indices, learned_assign) if learned else None
            if official is not None:
                scored = official.prepare(rec)
                acc[k].official_rows.append(official.image_rows(scored, x))
                if official_inception is not None:
                    acc[k].official_features.append(official_inception(scored).float())
            rec = rec.float().clamp(-1, 1)
            nan = torch.full((x.shape[0],), math.nan, device=device)
            row = torch.stack([
                psnr_per_image(rec, x),
                ssim_per_image(rec, x),
                lpips_per_image(lpips, rec, x) if lpips is not None else nan,
                psnr_per_image(rec_learned.float().clamp(-1, 1), x) if rec_learned is not None else nan,
                _distinct_per_row(enc.indices).float(),
                _distinct_per_row(enc.assign).float(),
                (learned_assign == enc.assign).float().mean(dim=1) if learned_assign is not None else nan,
            ], dim=1)  # (B, len(_COLUMNS))
            acc[k].rows.append(row)
            if inception is not None:
                acc[k].features.append(inception(rec).float())
            acc[k].usage.update(enc.indices)
            _synchronize(device)
            acc[k].seconds += time.perf_counter() - tick

    # ---- gather: the same collective calls, in the same order, on every rank ----
    world = context.world_size
    n_local = sum(r.shape[0] for r in acc[ks[0]].rows)
    counts = all_reduce_sum(torch.tensor([float(n_local), float(skipped), reference_seconds,
                                          *(acc[k].seconds for k in ks)], dtype=torch.float64, device=device))
    counts = counts.cpu().tolist()
    num_images, num_skipped = int(counts[0]), int(counts[1])
    if num_images == 0:
        raise ConfigError(f"no readable image to evaluate ({num_skipped} skipped, {len(dataset)} in the data set)")
    if (inception is not None or official_inception is not None) and num_images < 2:
        raise ConfigError(f"rFID needs at least 2 images, the data set gave {num_images}")
    ref_stats = None
    width = _feature_width(reference, device) if inception is not None else 0
    if inception is not None:
        ref = gather_rows(_cat(reference, width, device))
        if context.is_main:
            ref_stats = feature_stats(ref)
        del ref
    fids = torch.zeros(len(ks), dtype=torch.float64, device=device)
    gathered_rows = {}
    for i, k in enumerate(ks):
        gathered_rows[k] = gather_rows(_cat(acc[k].rows, len(_COLUMNS), device)).cpu()  # one transfer
        acc[k].usage.all_reduce()
        if inception is not None:
            feats = gather_rows(_cat(acc[k].features, width, device))
            if context.is_main:
                fids[i] = fid_from_stats(ref_stats, feature_stats(feats))
            del feats
            acc[k].features.clear()
    if inception is not None:
        all_reduce_sum(fids)  # rank 0's values, shared (the others add zeros)
    fids_list = fids.cpu().tolist()
    official_values = _official_values(official, acc, ks, official_reference, device, context)

    by_k = []
    for i, k in enumerate(ks):
        rows = gathered_rows[k].double()
        stats = acc[k].usage.stats()
        seconds = counts[3 + i] / world
        by_k.append(KMetrics(
            num_keep=k,
            rfid=fids_list[i] if inception is not None else None,
            psnr=float(rows[:, 0].mean()),
            psnr_std=float(rows[:, 0].std()) if num_images > 1 else 0.0,
            ssim=float(rows[:, 1].mean()),
            lpips=float(rows[:, 2].mean()) if lpips is not None else None,
            psnr_learned_recovery=float(rows[:, 3].mean()) if learned else None,
            codebook_usage=stats.fraction_used,
            unique_codes=stats.used,
            code_entropy_bits=stats.entropy_bits,
            code_perplexity=stats.perplexity,
            mean_tokens_kept=float(rows[:, 4].mean()),
            mean_merge_groups=float(rows[:, 5].mean()),
            recovery_accuracy=float(rows[:, 6].mean()) if learned else None,
            seconds=seconds,
            images_per_s=num_images / max(seconds, 1e-9),
            **official_values.get(k, {}),
        ))
    total = time.perf_counter() - start
    return TokenizerEvaluation(
        by_k=tuple(by_k), num_images=num_images, num_skipped=num_skipped, num_tokens=model.num_tokens,
        code_bits=model.config.code_dim, resolution=size, world_size=world,
        reference_seconds=counts[2] / world, total_seconds=total,
        sweep_images_per_s=num_images * len(ks) / max(total, 1e-9),
        official_batch_size=official.batch_size if official is not None else None,
    )


def _official_values(official: OfficialProtocol | None, acc: dict[int, _KAccumulator], ks: list[int],
                     reference: list[torch.Tensor], device: torch.device, context: DistContext) -> dict[int, dict]:
    """{K: {psnr_official, ssim_official, rfid_official}} of the whole set ({} without ``official``).
    Rows are gathered in data-set order (contiguous shards, rank order), so the PSNR / SSIM groups do
    not depend on the loader batch or the number of processes. Collective calls: every rank."""
    if official is None:
        return {}
    with_fid = official.inception is not None
    ref_stats = None
    width = _feature_width(reference, device) if with_fid else 0
    if with_fid:
        ref = gather_rows(_cat(reference, width, device))
        if context.is_main:
            ref_stats = official_feature_stats(ref)
        del ref
    fids = torch.zeros(len(ks), dtype=torch.float64, device=device)
    values = {}
    for i, k in enumerate(ks):
        rows = acc[k].official_rows
        gathered = gather_rows(torch.cat(rows) if rows else torch.zeros((0, 2), dtype=torch.float64, device=device))
        psnr, ssim = official.summarize(gathered.cpu())
        values[k] = {"psnr_official": psnr, "ssim_official": ssim, "rfid_official": None}
        if with_fid:
            feats = gather_rows(_cat(acc[k].official_features, width, device))
            if context.is_main:
                fids[i] = frechet_distance(*ref_stats, *official_feature_stats(feats))
            del feats
            acc[k].official_features.clear()
    if with_fid:
        all_reduce_sum(fids)  # rank 0's values, shared
        for k, fid in zip(ks, fids.cpu().tolist(), strict=True):
            values[k]["rfid_official"] = fid
    return values


def _feature_width(reference: list[torch.Tensor], device: torch.device) -> int:
    """The Inception feature width (2048 for pool3), agreed by every rank, including one that had
    no image (collective call)."""
    local = reference[0].shape[1] if reference else 0
    return int(gather_rows(torch.tensor([[local]], dtype=torch.long, device=device)).max())


def _cat(parts: list[torch.Tensor], width: int, device: torch.device) -> torch.Tensor:
    """Concatenate per-batch (b, width) tensors; (0, width) on a rank that had no images."""
    return torch.cat(parts) if parts else torch.zeros((0, width), dtype=torch.float32, device=device)
