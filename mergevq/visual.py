"""Pictures for people: image grids written as PNG (demo, reconstructions, samples), rows named on a
left label strip."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from PIL import Image, ImageDraw, ImageFont

from mergevq.fileio import atomic_write
from mergevq.metrics.recon import psnr_per_image


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) floats in [-1, 1] -> (N, H, W, 3) uint8 (one device->host copy for the batch)."""
    pixels = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return rearrange(pixels, "n c h w -> n h w c").cpu().numpy()


def grid(images: np.ndarray, *, ncol: int, pad: int = 2, scale: int = 1, fill: int = 255) -> np.ndarray:
    """Tile (N, H, W, 3) uint8 images row by row into one (rows*(H+pad)+pad, ..., 3) image.

    Missing cells at the end are left as ``fill``; ``scale`` enlarges each image by pixel repetition
    so tiny demo crops stay visible without interpolation blur."""
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"grid expects (N, H, W, 3) uint8 images, got shape {tuple(images.shape)}")
    if scale > 1:
        images = images.repeat(scale, axis=1).repeat(scale, axis=2)
    n, h, w, _ = images.shape
    rows = max(1, -(-n // ncol))
    out = np.full((rows * (h + pad) + pad, ncol * (w + pad) + pad, 3), fill, dtype=np.uint8)
    for i in range(n):
        r, c = divmod(i, ncol)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        out[y:y + h, x:x + w] = images[i]
    return out


def save_png(image: np.ndarray, path: str | os.PathLike) -> Path:
    """Write an (H, W, 3) uint8 image atomically (temp file + rename), creating the folder."""
    with atomic_write(path) as handle:
        Image.fromarray(image).save(handle, format="PNG")
    return Path(path)


# --------------------------------------------------------------------------------------------------
# Tokenizer pictures: merge groups and reconstructions at several K
# --------------------------------------------------------------------------------------------------


def group_palette(num_colours: int, *, seed: int = 0) -> np.ndarray:
    """(num_colours, 3) uint8 saturated colours, evenly spaced hues in a fixed shuffled order (so
    neighbouring group ids, which are often neighbouring groups, get unrelated colours)."""
    import colorsys

    order = np.random.default_rng(seed).permutation(num_colours)
    colours = [colorsys.hsv_to_rgb(i / num_colours, 0.85, 1.0) for i in range(num_colours)]
    return (np.asarray(colours)[order] * 255).round().astype(np.uint8)


def merge_groups_picture(image: torch.Tensor, assign: torch.Tensor, grid: tuple[int, int], *, scale: int = 1,
                         alpha: float = 0.5, boundaries: bool = True, boundary_colour: int = 0) -> np.ndarray:
    """The merge groups of one image: (H·scale, W·scale, 3) uint8.

    ``image`` (3, H, W) in [-1, 1]; ``assign`` (L,) int, the kept token holding each of the
    L = h·w token positions in raster order (``Encoded.assign[b]``); ``grid`` = (h, w). Every pixel
    is ``(1 − alpha)·image + alpha·colour(group)`` with one colour per group (``group_palette``);
    with ``boundaries`` the pixels on the right/bottom edge of a group where the neighbour belongs
    to another group are set to ``boundary_colour``. ``scale`` enlarges by pixel repetition first,
    so the 1-pixel boundaries do not cover the small demo crops."""
    h, w = grid
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"merge_groups_picture expects a (3, H, W) image, got shape {tuple(image.shape)}")
    if assign.numel() != h * w:
        raise ValueError(f"assign has {assign.numel()} entries but the grid {h}x{w} has {h * w} positions")
    height, width = image.shape[1] * scale, image.shape[2] * scale
    if height % h or width % w:
        raise ValueError(f"the image ({height}x{width} after scale) is not a multiple of the grid {h}x{w}")
    pixels = to_uint8(image[None])[0]
    if scale > 1:
        pixels = pixels.repeat(scale, axis=0).repeat(scale, axis=1)
    groups = assign.detach().reshape(h, w).cpu().numpy().astype(np.int64)
    groups = groups.repeat(height // h, axis=0).repeat(width // w, axis=1)  # (H, W) group id per pixel
    palette = group_palette(int(groups.max()) + 1)
    tinted = (1.0 - alpha) * pixels.astype(np.float32) + alpha * palette[groups].astype(np.float32)
    out = tinted.round().clip(0, 255).astype(np.uint8)
    if boundaries:
        edge = np.zeros((height, width), dtype=bool)
        edge[:, :-1] |= groups[:, :-1] != groups[:, 1:]
        edge[:-1, :] |= groups[:-1, :] != groups[1:, :]
        out[edge] = boundary_colour
    return out


LABEL_MARGIN = 4  # pixels of background either side of a row label


def _default_font() -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default()


def fitted_label_width(labels: Sequence[str]) -> int:
    """Width in pixels of a left strip that holds the longest of ``labels`` in PIL's default font."""
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    font = _default_font()
    longest = max((draw.textlength(text, font=font) for text in labels), default=0.0)
    return math.ceil(longest) + 2 * LABEL_MARGIN


def _label_strip(labels: Sequence[str], *, cell: int, pad: int, width: int, fill: int) -> np.ndarray:
    """A (len(labels)·(cell+pad)+pad, width, 3) strip with each label centred on its grid row."""
    strip = Image.new("RGB", (width, len(labels) * (cell + pad) + pad), (fill, fill, fill))
    draw = ImageDraw.Draw(strip)
    font = _default_font()
    for i, text in enumerate(labels):
        top, bottom = draw.textbbox((0, 0), text, font=font)[1::2]
        y = pad + i * (cell + pad) + (cell - (top + bottom)) // 2  # the ink, not the line box, centred
        draw.text((LABEL_MARGIN, y), text, fill=(0, 0, 0), font=font)
    return np.asarray(strip)


def labelled_rows(images: np.ndarray, labels: Sequence[str], *, ncol: int, scale: int = 1, pad: int = 2,
                  fill: int = 255, label_width: int | None = None) -> np.ndarray:
    """:func:`grid` of (N, H, W, 3) uint8 ``images`` with a left strip naming each row.

    ``labels`` has one entry per grid row (ceil(N / ncol)); ``label_width`` default: wide enough
    for the longest label (:func:`fitted_label_width`)."""
    rows = max(1, -(-images.shape[0] // ncol))
    if len(labels) != rows:
        raise ValueError(f"{len(labels)} labels for {rows} rows of {ncol} images")
    picture = grid(images, ncol=ncol, pad=pad, scale=scale, fill=fill)
    width = fitted_label_width(labels) if label_width is None else label_width
    strip = _label_strip(labels, cell=images.shape[1] * scale, pad=pad, width=width, fill=fill)
    return np.concatenate([strip, picture], axis=1)


def mean_psnr(originals: torch.Tensor, reconstructions: torch.Tensor) -> float:
    """Mean over images of the per-image PSNR in dB (``10 log10(4 / MSE)`` in [-1, 1],
    :func:`mergevq.metrics.recon.psnr_per_image`): the number on a reconstruction row."""
    return float(psnr_per_image(originals, reconstructions).mean())


def k_label(k: int, psnr: float | None = None) -> str:
    """Row label of a K: ``"K=36"``, or with a PSNR ``"K=36, 22.6 dB"`` (the default font's 2 px space
    alone would run K and the PSNR together)."""
    return f"K={k}" if psnr is None else f"K={k}, {psnr:.1f} dB"


def reconstruction_grid(originals: torch.Tensor, reconstructions_by_k: dict[int, torch.Tensor], *,
                        scale: int = 4, pad: int = 2, labels: bool = True, psnr: bool = True,
                        label_width: int | None = None, fill: int = 255) -> np.ndarray:
    """Originals and their reconstructions at several K, one row each: (rows·(H·scale+pad)+pad, ..., 3) uint8.

    ``originals`` (N, 3, H, W) and every value of ``reconstructions_by_k`` (N, 3, H, W), in [-1, 1].
    Row 0: the originals; then one row per K, largest K first. With ``labels`` a left strip names
    the rows ("original", "K=64, 22.6 dB", ...: with ``psnr`` the row's :func:`mean_psnr`);
    ``label_width`` default: fitted to the longest label."""
    n = originals.shape[0]
    ks = sorted(reconstructions_by_k, reverse=True)
    for k in ks:
        if tuple(reconstructions_by_k[k].shape) != tuple(originals.shape):
            raise ValueError(f"K={k}: shape {tuple(reconstructions_by_k[k].shape)} differs from the originals' "
                             f"{tuple(originals.shape)}")
    tiles = np.concatenate([to_uint8(originals)] + [to_uint8(reconstructions_by_k[k]) for k in ks])
    if not labels:
        return grid(tiles, ncol=n, pad=pad, scale=scale, fill=fill)
    names = ["original"] + [k_label(k, mean_psnr(originals, reconstructions_by_k[k]) if psnr else None)
                            for k in ks]
    return labelled_rows(tiles, names, ncol=n, scale=scale, pad=pad, fill=fill, label_width=label_width)


def merge_groups_grid(originals: torch.Tensor, assigns_by_k: dict[int, torch.Tensor], token_grid: tuple[int, int],
                      *, scale: int = 4, pad: int = 2, label_width: int | None = None, fill: int = 255) -> np.ndarray:
    """One row per K (largest first, labelled "K=36"), each image as the pair original | merge groups.

    ``originals`` (N, 3, H, W) in [-1, 1]; every value of ``assigns_by_k`` (N, L) is ``Encoded.assign``
    at that K; ``token_grid`` = (h, w). Both tiles of a pair are enlarged ``scale`` times
    (:func:`merge_groups_picture`), so a row is 2·N tiles wide."""
    n = originals.shape[0]
    ks = sorted(assigns_by_k, reverse=True)
    for k in ks:
        if assigns_by_k[k].shape[0] != n:
            raise ValueError(f"K={k}: {assigns_by_k[k].shape[0]} assignments for {n} images")
    plain = to_uint8(originals)
    if scale > 1:
        plain = plain.repeat(scale, axis=1).repeat(scale, axis=2)
    tiles = []
    for k in ks:
        for i in range(n):
            tiles += [plain[i], merge_groups_picture(originals[i], assigns_by_k[k][i], token_grid, scale=scale)]
    return labelled_rows(np.stack(tiles), [k_label(k) for k in ks], ncol=2 * n, pad=pad, fill=fill,
                         label_width=label_width)


def picture_scale(size: int, *, target: int = 128) -> int:
    """The pixel-repetition factor that shows a ``size``-pixel image at about ``target`` pixels (1 for
    images already that large), so 32 px crops stay visible and 256 px images are not enlarged."""
    return max(1, target // max(1, size))


@torch.no_grad()
def tokenizer_pictures(tokenizer: torch.nn.Module, images: torch.Tensor, *, ks: Sequence[int] | None = None,
                       group_images: int | None = None, scale: int | None = None) -> dict[str, np.ndarray]:
    """The two pictures of a tokenizer on ``images`` (N, 3, H, W) in [-1, 1], one row per K of ``ks``
    (default: K = L, the nominal K and the smallest K of the tokenizer's candidates; a K that
    repeats another one is shown once):

    ``reconstructions``: the originals, then each K labelled with its PSNR (:func:`reconstruction_grid`);
    ``merge_groups``: pairs original | merge groups of the first ``group_images`` images (default:
    all) at each K (:func:`merge_groups_grid`). ``scale`` default: :func:`picture_scale` of the image size."""
    config = tokenizer.config
    scale = picture_scale(images.shape[-1]) if scale is None else scale
    ks = [config.num_tokens, config.num_keep, min(config.k_candidates)] if ks is None else ks
    images = images.float()
    recs: dict[int, torch.Tensor] = {}
    assigns: dict[int, torch.Tensor] = {}
    for k in dict.fromkeys(ks):
        encoded = tokenizer.encode(images, k)
        recs[k] = tokenizer.decode_codes(encoded.codes, encoded.assign).float().clamp(-1, 1)
        assigns[k] = encoded.assign
    shown = images.shape[0] if group_images is None else group_images
    return {
        "reconstructions": reconstruction_grid(images, recs, scale=scale),
        "merge_groups": merge_groups_grid(images[:shown], {k: a[:shown] for k, a in assigns.items()},
                                          config.grid, scale=scale),
    }
