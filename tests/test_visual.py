"""Tokenizer pictures in mergevq/visual.py: merge groups and the reconstruction grid."""

import numpy as np
import pytest
import torch

from mergevq.visual import group_palette, merge_groups_picture, reconstruction_grid, to_uint8


def _groups_4x4() -> torch.Tensor:
    # 4x4 token grid, 3 groups: left half, top-right quarter, bottom-right quarter
    ids = torch.zeros(4, 4, dtype=torch.int64)
    ids[:2, 2:] = 1
    ids[2:, 2:] = 2
    return ids.flatten()


def test_merge_groups_tint_is_one_colour_per_group():
    image = torch.zeros(3, 8, 8)  # flat grey (127.5 -> 128 after to_uint8)
    assign = _groups_4x4()
    out = merge_groups_picture(image, assign, (4, 4), scale=2, boundaries=False)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    palette = group_palette(3)
    expected = np.round(0.5 * 128 + 0.5 * palette.astype(np.float32)).astype(np.uint8)  # (3, 3)
    groups = assign.reshape(4, 4).numpy().repeat(4, 0).repeat(4, 1)  # per output pixel (16 x 16)
    for g in range(3):
        pixels = out[groups == g]
        assert (pixels == expected[g]).all()  # every pixel of a group has that group's tint
    assert len({tuple(c) for c in expected}) == 3  # and the groups differ


def test_merge_groups_tint_keeps_the_image_and_draws_boundaries():
    image = torch.linspace(-1, 1, 3 * 8 * 8).reshape(3, 8, 8)
    assign = _groups_4x4()
    out = merge_groups_picture(image, assign, (4, 4), scale=1, alpha=0.5, boundaries=True, boundary_colour=0)
    pixels = to_uint8(image[None])[0].astype(np.float32)
    groups = assign.reshape(4, 4).numpy().repeat(2, 0).repeat(2, 1)
    tinted = np.round(0.5 * pixels + 0.5 * group_palette(3)[groups]).astype(np.uint8)
    edge = np.zeros((8, 8), bool)
    edge[:, :-1] |= groups[:, :-1] != groups[:, 1:]
    edge[:-1, :] |= groups[:-1, :] != groups[1:, :]
    assert edge.any() and (out[edge] == 0).all()
    assert (out[~edge] == tinted[~edge]).all()
    # no boundaries with a single group
    single = merge_groups_picture(image, torch.zeros(16, dtype=torch.int64), (4, 4))
    assert (single != 0).any(axis=-1).all()


def test_merge_groups_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="positions"):
        merge_groups_picture(torch.zeros(3, 8, 8), torch.zeros(15, dtype=torch.int64), (4, 4))
    with pytest.raises(ValueError, match="3, H, W"):
        merge_groups_picture(torch.zeros(8, 8), torch.zeros(16, dtype=torch.int64), (4, 4))


def test_reconstruction_grid_layout():
    n, h = 3, 4
    originals = torch.full((n, 3, h, h), -1.0)  # black
    by_k = {16: torch.full((n, 3, h, h), 1.0), 4: torch.zeros(n, 3, h, h)}  # white, grey
    out = reconstruction_grid(originals, by_k, scale=2, pad=1, labels=False)
    cell = h * 2
    assert out.shape == (3 * (cell + 1) + 1, n * (cell + 1) + 1, 3)
    rows = [0, 255, 128]  # originals, then K=16, then K=4 (largest K first)
    for r, value in enumerate(rows):
        for c in range(n):
            y, x = 1 + r * (cell + 1), 1 + c * (cell + 1)
            assert (out[y:y + cell, x:x + cell] == value).all()
    labelled = reconstruction_grid(originals, by_k, scale=2, pad=1, labels=True, label_width=40)
    assert labelled.shape == (out.shape[0], out.shape[1] + 40, 3)
    assert (labelled[:, 40:] == out).all() and (labelled[:, :40] < 255).any()  # some label text
    with pytest.raises(ValueError, match="differs"):
        reconstruction_grid(originals, {4: torch.zeros(n, 3, h, h + 1)})
