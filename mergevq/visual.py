"""Pictures for people: image grids written as PNG (demo, reconstructions, samples)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from PIL import Image

from mergevq.fileio import atomic_write


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


def _label_strip(labels: list[str], *, cell: int, pad: int, width: int, fill: int) -> np.ndarray:
    from PIL import ImageDraw

    strip = Image.new("RGB", (width, len(labels) * (cell + pad) + pad), (fill, fill, fill))
    draw = ImageDraw.Draw(strip)
    for i, text in enumerate(labels):
        draw.text((4, pad + i * (cell + pad) + cell // 2 - 5), text, fill=(0, 0, 0))
    return np.asarray(strip)


def reconstruction_grid(originals: torch.Tensor, reconstructions_by_k: dict[int, torch.Tensor], *,
                        scale: int = 4, pad: int = 2, labels: bool = True, label_width: int = 72,
                        fill: int = 255) -> np.ndarray:
    """Originals and their reconstructions at several K, one row each: (rows·(H·scale+pad)+pad, ..., 3) uint8.

    ``originals`` (N, 3, H, W) and every value of ``reconstructions_by_k`` (N, 3, H, W), in [-1, 1].
    Row 0: the originals; then one row per K, largest K first. With ``labels`` a ``label_width``
    strip on the left names the rows ("original", "K=64", ...)."""
    n = originals.shape[0]
    rows = [("original", originals)] + [(f"K={k}", reconstructions_by_k[k])
                                        for k in sorted(reconstructions_by_k, reverse=True)]
    for name, images in rows:
        if tuple(images.shape) != tuple(originals.shape):
            raise ValueError(f"{name}: shape {tuple(images.shape)} differs from the originals' {tuple(originals.shape)}")
    tiles = np.concatenate([to_uint8(images) for _, images in rows])
    picture = grid(tiles, ncol=n, pad=pad, scale=scale, fill=fill)
    if not labels:
        return picture
    strip = _label_strip([name for name, _ in rows], cell=originals.shape[-2] * scale, pad=pad,
                         width=label_width, fill=fill)
    return np.concatenate([strip, picture], axis=1)


def picture_scale(size: int, *, target: int = 128) -> int:
    """The pixel-repetition factor that shows a ``size``-pixel image at about ``target`` pixels (1 for
    images already that large), so 32 px crops stay visible and 256 px images are not enlarged."""
    return max(1, target // max(1, size))


@torch.no_grad()
def tokenizer_pictures(tokenizer: torch.nn.Module, images: torch.Tensor, *, scale: int | None = None
                       ) -> dict[str, np.ndarray]:
    """The two pictures of a tokenizer on ``images`` (N, 3, H, W) in [-1, 1]:

    ``reconstructions``: rows originals | K = L | nominal K | smallest K of the tokenizer's candidates
    (:func:`reconstruction_grid`, a K that repeats another one is shown once);
    ``merge_groups``: each image's merge groups at the nominal K (:func:`merge_groups_picture`), in
    one row. ``scale`` default: :func:`picture_scale` of the image size."""
    config = tokenizer.config
    scale = picture_scale(images.shape[-1]) if scale is None else scale
    ks = [config.num_tokens, config.num_keep, min(config.k_candidates)]
    recs: dict[int, torch.Tensor] = {}
    assigns: dict[int, torch.Tensor] = {}
    for k in dict.fromkeys(ks):
        encoded = tokenizer.encode(images, k)
        recs[k] = tokenizer.decode_codes(encoded.codes, encoded.assign).float().clamp(-1, 1)
        assigns[k] = encoded.assign
    groups = [merge_groups_picture(images[i], assigns[config.num_keep][i], config.grid, scale=scale)
              for i in range(images.shape[0])]
    return {
        "reconstructions": reconstruction_grid(images.float(), recs, scale=scale),
        "merge_groups": grid(np.stack(groups), ncol=len(groups)),
    }
