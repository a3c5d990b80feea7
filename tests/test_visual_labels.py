"""Row labels of the pictures (mergevq/visual.py): reconstructions named by K and PSNR, merge groups
as original | groups pairs per K, samples named by class."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mergevq.visual import (
    fitted_label_width,
    grid,
    k_label,
    labelled_rows,
    mean_psnr,
    merge_groups_grid,
    merge_groups_picture,
    reconstruction_grid,
    to_uint8,
    tokenizer_pictures,
)

BACKGROUND = 255


def _row_bands(picture: np.ndarray, *, rows: int, cell: int, pad: int, width: int) -> list[np.ndarray]:
    """The label strip's part beside each grid row."""
    return [picture[pad + r * (cell + pad): pad + r * (cell + pad) + cell, :width] for r in range(rows)]


def _tiles(n: int, h: int, *, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, h, h, 3), dtype=np.uint8)


def test_labelled_rows_adds_a_fitted_strip_with_ink_on_every_row():
    images = _tiles(5, 4)
    labels = ["first", "second row", "3"]
    out = labelled_rows(images, labels, ncol=2, scale=4, pad=2)
    width = fitted_label_width(labels)
    plain = grid(images, ncol=2, scale=4, pad=2)
    assert out.shape == (plain.shape[0], width + plain.shape[1], 3)  # the strip widens the grid only
    assert plain.shape[0] == 3 * (16 + 2) + 2  # 3 rows of 16 px cells
    assert (out[:, width:] == plain).all()
    for band in _row_bands(out, rows=3, cell=16, pad=2, width=width):
        assert (band < BACKGROUND).any()  # text drawn beside every row
    assert (out[:, width - 2:width] == BACKGROUND).all()  # the longest label is not clipped
    with pytest.raises(ValueError, match="labels for 3 rows"):
        labelled_rows(images, ["a", "b"], ncol=2)


def test_fitted_label_width_grows_with_the_longest_label():
    assert fitted_label_width(["K=9"]) < fitted_label_width(["K=9", "K=64, 22.6 dB"])
    assert fitted_label_width(["K=64, 22.6 dB"]) == fitted_label_width(["K=64, 22.6 dB", "K=9"])


def test_mean_psnr_is_the_mean_of_per_image_psnrs():
    originals = torch.zeros(2, 3, 4, 4)
    recs = torch.stack([torch.full((3, 4, 4), 0.1), torch.full((3, 4, 4), 0.2)])  # MSE 0.01 and 0.04
    expected = (10 * np.log10(4 / 0.01) + 10 * np.log10(4 / 0.04)) / 2
    assert mean_psnr(originals, recs) == pytest.approx(expected, abs=1e-4)
    assert k_label(36, expected) == f"K=36, {expected:.1f} dB" == "K=36, 23.0 dB"
    assert k_label(36) == "K=36"


def test_reconstruction_rows_are_labelled_with_k_and_their_psnr():
    n, h = 3, 4
    originals = torch.rand(n, 3, h, h) * 2 - 1
    by_k = {4: originals + 0.2 * torch.randn(n, 3, h, h), 16: originals + 0.05 * torch.randn(n, 3, h, h)}
    by_k = {k: v.clamp(-1, 1) for k, v in by_k.items()}
    out = reconstruction_grid(originals, by_k, scale=2, pad=1)
    names = ["original", k_label(16, mean_psnr(originals, by_k[16])), k_label(4, mean_psnr(originals, by_k[4]))]
    assert "dB" in names[1] and names[1] != names[2]
    tiles = np.concatenate([to_uint8(originals), to_uint8(by_k[16]), to_uint8(by_k[4])])
    assert (out == labelled_rows(tiles, names, ncol=n, scale=2, pad=1)).all()  # the strip shows exactly these
    plain = reconstruction_grid(originals, by_k, scale=2, pad=1, labels=False)
    width = fitted_label_width(names)
    assert out.shape[1] == plain.shape[1] + width and out.shape[0] == plain.shape[0] == 3 * (8 + 1) + 1
    no_psnr = reconstruction_grid(originals, by_k, scale=2, pad=1, psnr=False)
    assert no_psnr.shape[1] == plain.shape[1] + fitted_label_width(["original", "K=16", "K=4"])


def _assign(l_side: int, k_side: int) -> torch.Tensor:
    """(L,) blocks of (l_side/k_side)^2 positions: k_side^2 groups on an l_side x l_side grid."""
    rows = torch.arange(l_side) // (l_side // k_side)
    return (rows[:, None] * k_side + rows[None, :]).flatten()


def test_merge_groups_grid_pairs_each_original_with_its_groups_per_k():
    n, h, scale, pad = 2, 8, 2, 2
    originals = torch.rand(n, 3, h, h) * 2 - 1
    assigns = {4: _assign(4, 2).repeat(n, 1), 16: _assign(4, 4).repeat(n, 1)}
    out = merge_groups_grid(originals, assigns, (4, 4), scale=scale, pad=pad)
    cell = h * scale
    width = fitted_label_width(["K=16", "K=4"])
    assert out.shape == (2 * (cell + pad) + pad, width + 2 * n * (cell + pad) + pad, 3)
    upscaled = to_uint8(originals).repeat(scale, axis=1).repeat(scale, axis=2)
    for r, k in enumerate([16, 4]):  # largest K first
        y = pad + r * (cell + pad)
        for i in range(n):
            x = width + pad + 2 * i * (cell + pad)
            assert (out[y:y + cell, x:x + cell] == upscaled[i]).all()  # the original
            groups = merge_groups_picture(originals[i], assigns[k][i], (4, 4), scale=scale)
            x += cell + pad
            assert (out[y:y + cell, x:x + cell] == groups).all()  # next to its merge groups
    for band in _row_bands(out, rows=2, cell=cell, pad=pad, width=width):
        assert (band < BACKGROUND).any()
    with pytest.raises(ValueError, match="assignments for 2 images"):
        merge_groups_grid(originals, {4: assigns[4][:1]}, (4, 4))


def test_samples_picture_has_one_label_per_class_row():
    class_names = ["airplane", "automobile", "bird"]
    per_class, h, scale, pad = 2, 4, 3, 2
    out = labelled_rows(_tiles(len(class_names) * per_class, h), class_names, ncol=per_class, scale=scale, pad=pad)
    cell = h * scale
    width = fitted_label_width(class_names)
    assert out.shape == (3 * (cell + pad) + pad, width + per_class * (cell + pad) + pad, 3)
    bands = _row_bands(out, rows=3, cell=cell, pad=pad, width=width)
    assert all((band < BACKGROUND).any() for band in bands)
    assert len({band.tobytes() for band in bands}) == 3  # a different name on each row


class _FakeTokenizer:
    """A 4x4-token tokenizer: K = k_side^2 square groups; a reconstruction is the image dimmed by 1/K."""

    config = SimpleNamespace(num_tokens=16, num_keep=4, k_candidates=(4, 1), grid=(4, 4))

    def encode(self, images: torch.Tensor, k: int) -> SimpleNamespace:
        side = int(round(k ** 0.5))
        assign = _assign(4, side).repeat(images.shape[0], 1)
        return SimpleNamespace(codes=images, assign=assign, k=k)

    def decode_codes(self, codes: torch.Tensor, assign: torch.Tensor) -> torch.Tensor:
        return codes * (1 - 1 / (int(assign.max()) + 2))


def test_tokenizer_pictures_rows_are_l_nominal_and_smallest_k():
    images = torch.rand(3, 3, 8, 8) * 2 - 1
    tokenizer = _FakeTokenizer()
    pictures = tokenizer_pictures(tokenizer, images, scale=2)
    cell, strip = 16, fitted_label_width(["K=16"])
    recon, groups = pictures["reconstructions"], pictures["merge_groups"]
    assert recon.shape[0] == 4 * (cell + 2) + 2  # originals, K = 16, 4, 1
    assert groups.shape == (3 * (cell + 2) + 2, strip + 6 * (cell + 2) + 2, 3)  # 3 pairs per K row
    recs = {}
    for k in (16, 4, 1):
        enc = tokenizer.encode(images, k)
        recs[k] = tokenizer.decode_codes(enc.codes, enc.assign).clamp(-1, 1)
    assert (recon == reconstruction_grid(images, recs, scale=2)).all()  # the same labelled grid
    some = tokenizer_pictures(tokenizer, images, ks=[16, 1], group_images=1, scale=2)
    assert some["reconstructions"].shape[0] == 3 * (cell + 2) + 2
    assert some["merge_groups"].shape == (2 * (cell + 2) + 2, strip + 2 * (cell + 2) + 2, 3)  # 1 pair per row
