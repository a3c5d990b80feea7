"""The tokenizer evaluation pass (mergevq/inference/tokenizer_eval.py): metrics equal hand computations
on the same reconstructions, the originals' Inception features are computed once for the whole K
sweep, unreadable images are skipped and counted, a bad K fails before any image is processed, and
2 gloo processes give the numbers of 1 process.

Offline stand-ins: a random tiny-R tokenizer, a random Inception in torch-fidelity's layout read at
its "64" feature layer (a 64-d FID is cheap; the 2048-d path is the same code, see
test_metrics_fid.py) and a random LPIPS-VGG.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from _distributed import run_ranks
from _eval_weights import write_random_inception, write_random_lpips
from torch import nn
from torch.utils.data import Dataset

from mergevq.distributed import DistContext
from mergevq.errors import ConfigError
from mergevq.inference.tokenizer_eval import (
    ImageTensorDataset,
    evaluate_tokenizer,
    parse_num_keep,
)
from mergevq.metrics.codebook import code_counts, usage_from_counts
from mergevq.metrics.fid import InceptionFeatures, fid_from_features
from mergevq.metrics.recon import psnr_per_image, ssim_per_image
from mergevq.pretrained import load_inception_extractor, load_lpips
from mergevq.tokenizer.model import MergeVQ, build_config
from taming.data.base import Skipped

CPU = torch.device("cpu")
KS = (64, 9)  # L = 64 for tiny-R


def _images(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=g) * 2 - 1
    return F.interpolate(coarse, size=(32, 32), mode="bicubic").clamp(-1, 1)  # (n, 3, 32, 32)


def _inception64(path: Path) -> InceptionFeatures:
    return InceptionFeatures(extractor=load_inception_extractor(None, ("64",), path=path), with_logits=False)


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> Path:
    """A saved tiny tokenizer, stand-in Inception / LPIPS files and 5 images, shared with the ranks."""
    root = tmp_path_factory.mktemp("tokenizer_eval")
    torch.manual_seed(0)
    MergeVQ(config=build_config(preset="tiny-R")).save_pretrained(root / "tokenizer")
    write_random_inception(root / "inception.pth")
    write_random_lpips(root / "lpips.pth")
    torch.save(_images(5), root / "images.pt")
    return root


def _evaluate(root: Path, context: DistContext, *, inception: nn.Module | None = None, lpips: bool = True):
    model = MergeVQ.from_pretrained(root / "tokenizer").eval()
    return evaluate_tokenizer(
        model, ImageTensorDataset(torch.load(root / "images.pt")), num_keep=KS,
        inception=inception if inception is not None else _inception64(root / "inception.pth"),
        lpips=load_lpips("vgg", path=root / "lpips.pth") if lpips else None, batch_size=2, device=CPU,
        context=context,
    )


class _CountingInception(nn.Module):
    """Counts the images that go through the wrapped extractor."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.images = 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.images += images.shape[0]
        return self.inner(images)


def test_metrics_equal_hand_computations_and_originals_go_through_inception_once(assets):
    counting = _CountingInception(_inception64(assets / "inception.pth"))
    result = _evaluate(assets, DistContext(rank=0, world_size=1, local_rank=0), inception=counting)
    images = torch.load(assets / "images.pt")
    n = images.shape[0]
    # originals once, reconstructions once per K, plus the untimed 2-image warm-up
    assert counting.images == n * (1 + len(KS)) + 2
    assert (result.num_images, result.num_skipped, result.num_tokens, result.code_bits) == (n, 0, 64, 18)
    assert [m.num_keep for m in result.by_k] == list(KS)

    model = MergeVQ.from_pretrained(assets / "tokenizer").eval()
    reference = counting.inner(images)
    with torch.no_grad():
        for metrics in result.by_k:
            enc = model.encode(images, metrics.num_keep)
            rec = model.decode_codes(enc.codes, enc.assign).clamp(-1, 1)
            assert metrics.psnr == pytest.approx(float(psnr_per_image(rec, images).mean()), abs=1e-4)
            assert metrics.ssim == pytest.approx(float(ssim_per_image(rec, images).mean()), abs=1e-5)
            assert metrics.rfid == pytest.approx(fid_from_features(reference, counting.inner(rec)), rel=1e-4, abs=1e-4)
            usage = usage_from_counts(code_counts(enc.indices, 2 ** 18))
            assert (metrics.unique_codes, metrics.codebook_usage) == (usage.used, usage.fraction_used)
            assert metrics.code_entropy_bits == pytest.approx(usage.entropy_bits)
            distinct = [len(set(row.tolist())) for row in enc.indices]
            assert metrics.mean_tokens_kept == pytest.approx(sum(distinct) / n)
            assert metrics.mean_merge_groups == metrics.num_keep  # every kept token holds a group
            assert metrics.lpips > 0 and metrics.psnr_learned_recovery is not None
            assert metrics.images_per_s > 0
    table = result.markdown_table().splitlines()
    assert len(table) == 2 + len(KS) and table[2].startswith("| 64 |") and table[3].startswith("| 9 |")


class _WithUnreadable(Dataset):
    """Images with item 1 unreadable (what ImagePaths returns for a broken file)."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int):
        if index == 1:
            return Skipped(path="broken.jpg", index=index)
        return {"image": self.images[index], "index": index}


def test_unreadable_images_are_skipped_and_counted(assets):
    model = MergeVQ.from_pretrained(assets / "tokenizer").eval()
    result = evaluate_tokenizer(model, _WithUnreadable(_images(4)), num_keep=[16], inception=None, lpips=None,
                                batch_size=2, device=CPU)
    assert (result.num_images, result.num_skipped) == (3, 1)
    m = result.by_k[0]
    assert m.rfid is None and m.lpips is None and math.isfinite(m.psnr)


class _MustNotBeRead(Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int):
        raise AssertionError("an image was read before the K list was checked")


@pytest.mark.parametrize("ks, match", [([64, 65], r"num_keep=65.*L=64"), ([0], r"num_keep=0.*L=64"),
                                       ([-3, 16], r"num_keep=-3")])
def test_k_outside_one_to_l_is_a_clear_error_before_any_image(assets, ks, match):
    model = MergeVQ.from_pretrained(assets / "tokenizer").eval()
    with pytest.raises(ConfigError, match=match) as info:
        evaluate_tokenizer(model, _MustNotBeRead(), num_keep=ks, inception=None, lpips=None, batch_size=2,
                           device=CPU)
    assert "\n" not in str(info.value)


def test_parse_num_keep():
    assert parse_num_keep("256, 196,144,196") == [256, 196, 144]
    assert parse_num_keep([64, 36]) == [64, 36] and parse_num_keep(9) == [9]
    for bad in ("64,abc", "", [1.5], True):
        with pytest.raises(ConfigError, match="num_keep"):
            parse_num_keep(bad)


def _rank_worker(rank, world, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        root = Path(out_dir)
        result = _evaluate(root, DistContext(rank=rank, world_size=world, local_rank=rank), lpips=False)
        torch.save(result.to_dict(), root / f"rank{rank}.pt")
        dist.barrier()  # all ranks done before any tears the group down (gloo aborts a rank whose peer left)
    finally:
        dist.destroy_process_group()


_TIMING = ("seconds", "images_per_s")


def _numbers(result: dict) -> list[dict]:
    return [{k: v for k, v in m.items() if k not in _TIMING} for m in result["by_k"]]


@pytest.mark.distributed
def test_two_gloo_processes_give_the_single_process_metrics(assets, tmp_path):
    for name in ("tokenizer", "inception.pth", "lpips.pth", "images.pt"):
        (tmp_path / name).symlink_to(assets / name)
    # LPIPS rows travel with the PSNR/SSIM rows (one gather); left out to keep the test short
    single = asdict(_evaluate(assets, DistContext(rank=0, world_size=1, local_rank=0), lpips=False))
    run_ranks(_rank_worker, world=2, tmp_path=tmp_path, timeout_s=120, what="2-process evaluation")
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert _numbers(ranks[0]) == _numbers(ranks[1])  # every rank returns the same result
    assert ranks[0]["world_size"] == 2 and ranks[0]["num_images"] == single["num_images"] == 5
    for multi, one in zip(_numbers(ranks[0]), _numbers(single), strict=True):
        assert multi.keys() == one.keys()
        for key, value in one.items():
            if isinstance(value, float):
                # ranks hold 3 + 2 images, batches differ: only the float rounding of batched kernels may differ
                assert multi[key] == pytest.approx(value, rel=1e-4, abs=1e-5), key
            else:
                assert multi[key] == value, key
