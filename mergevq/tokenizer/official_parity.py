"""Compare our tokenizer with tensors the authors' code computed (the reference folder format).

A reference folder (``tests/data/official_tokenizer/<variant>`` or the full one the reference generator
wrote) holds ``config.json`` (the authors' ``constructor_args``, ``merge_nums``, per-merge fragile
feature positions), ``state_dict.safetensors`` (the authors' keys), ``inputs.safetensors`` (``images``)
and ``outputs_m<M>.safetensors`` per merge count M. For every (variant, M) :func:`compare_reference`
builds ``MergeVQ(config=config_from_official(args with merge_num=M))``, converts and loads the state dict
strictly, runs the inputs in float32 with ``torch.set_float32_matmul_precision("highest")``, and measures:

* indices: equal, except bits the reference lists as fragile (``|feature| < 1e-4``: a rounding
  difference may flip them); ``assign`` equal to ``assign_canonical``;
* ``z`` against ``enc_features`` (ToMe grid order, gathered by ``canonical_order``), the [CLS] head on
  ``Encoded.cls`` against ``cls_head_out``, ``decode_codes`` on the reference codes (sign of
  ``enc_features``, 0 -> -1) and assignment against ``recon`` (unclamped; a stored ``recon`` smaller
  than the image is its top-left crop), and end to end on our own codes;
* in train mode: ``per_sample_entropy`` and ``commitment`` against the stored values. Our
  ``codebook_entropy`` is the exact H(p̄); the authors' is -Σ p̄ log(p̄ + 1e-5). From our p̄ (float64)
  the authors' formula must give the stored value, and ours must exceed the stored one by exactly
  H(p̄) minus that formula.

Tolerances: 1e-4 for features and the [CLS] head. The reconstructions are held to a max abs difference of
1e-3 and a mean abs difference of 5e-5, because the tiny reference models make the decoder's float32
output uncertain at that level: the authors' unmerged codes are channels-last, so their first decoder
level runs in channels-last, where torch's CPU GroupNorm loses precision on a channel whose adaptive
GroupNorm output is nearly constant (mean 0.37, std 1.6e-3 in G, M=0); a one-ulp change of that level's
input moves the reconstruction by up to 1.4e-3. Our decoder runs the same layout; what is left is such
rounding (max 7.7e-4, mean <= 3e-5 over the full images), far below what a wrong function gives (a biased
variance or a GroupNorm eps of 1e-5: max >= 1.7e-2, mean >= 2.5e-3).

``python -m mergevq.tokenizer.official_parity FOLDER [--merge-nums 0 28]`` prints one row per
(variant, M) and exits 1 when a row fails the tolerances.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from mergevq.errors import ConfigError
from mergevq.tokenizer.model import MergeVQ
from mergevq.tokenizer.official import config_from_official, convert_state_dict
from mergevq.tokenizer.quantizer import mean_code_probs

__all__ = ["RECON_MEAN_TOLERANCE", "RECON_TOLERANCE", "TOLERANCE", "ParityResult", "compare_reference", "main",
           "reference_folders"]

TOLERANCE = 1e-4  # features, [CLS] head
RECON_TOLERANCE = 1e-3  # reconstructions, max abs (float32 conditioning of the reference: module docstring)
RECON_MEAN_TOLERANCE = 5e-5  # reconstructions, mean abs
LOSS_TOLERANCE = 1e-5  # the LFQ loss terms
OFFICIAL_EPS = 1e-5  # inside the log of the authors' codebook entropy


@dataclass(frozen=True)
class ParityResult:
    """One (variant, M): max abs differences and counts (see the module docstring)."""

    variant: str
    merge_num: int
    num_keep: int
    index_mismatches: int  # tokens whose index differs in a bit that is not fragile
    fragile_flips: int  # fragile bits that differ (allowed)
    assign_equal: bool
    z_max_abs: float
    cls_max_abs: float | None  # None: no [CLS] head output stored
    recon_max_abs: float  # our decoder on the reference codes and assignment
    recon_mean_abs: float
    recon_own_max_abs: float  # our decoder on our own codes and assignment (end to end)
    per_sample_entropy_diff: float
    commitment_diff: float
    codebook_formula_diff: float  # authors' formula on our p̄ (float64) - stored
    codebook_excess_diff: float  # (ours - stored) - (H(p̄) - authors' formula on our p̄)
    codebook_excess: float  # H(p̄) - authors' formula on our p̄ (how much larger ours is by design)

    def problems(self, tol: float = TOLERANCE, loss_tol: float = LOSS_TOLERANCE) -> list[str]:
        out = []
        if self.index_mismatches:
            out.append(f"{self.index_mismatches} indices differ outside fragile bits")
        if not self.assign_equal:
            out.append("assign differs")
        checks = [("z", self.z_max_abs, tol), ("cls head", self.cls_max_abs, tol),
                  ("recon", self.recon_max_abs, RECON_TOLERANCE),
                  ("recon mean", self.recon_mean_abs, RECON_MEAN_TOLERANCE),
                  ("per-sample entropy", self.per_sample_entropy_diff, loss_tol),
                  ("commitment", self.commitment_diff, loss_tol),
                  ("codebook formula", self.codebook_formula_diff, loss_tol),
                  ("codebook excess", self.codebook_excess_diff, loss_tol)]
        if not self.fragile_flips:  # a flipped bit changes the codes, so the end-to-end output too
            checks.append(("recon end to end", self.recon_own_max_abs, RECON_TOLERANCE))
        out += [f"{name} off by {value:.3g}" for name, value, limit in checks
                if value is not None and not abs(value) <= limit]
        return out

    @property
    def ok(self) -> bool:
        return not self.problems()


def reference_folders(folder: str | Path) -> list[Path]:
    """``folder`` itself when it holds a ``config.json``, else its sub-folders that do (sorted)."""
    folder = Path(folder)
    if (folder / "config.json").is_file():
        return [folder]
    found = sorted(p for p in folder.iterdir() if (p / "config.json").is_file()) if folder.is_dir() else []
    if not found:
        raise ConfigError(f"{folder}: no reference folder (config.json) here or in its sub-folders")
    return found


@contextmanager
def _highest_precision() -> Iterator[None]:
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def _load(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        raise ValueError(f"shape {tuple(a.shape)} vs reference {tuple(b.shape)}")
    return (a.double() - b.double()).abs().max().item()


def _gather_tokens(x: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """(B, K, ...) in ToMe order -> canonical order (``order[b, c]`` = ToMe index of canonical c)."""
    index = order.reshape(*order.shape, *([1] * (x.ndim - 2))).expand(*order.shape, *x.shape[2:])
    return x.gather(1, index)


def _fragile_mask(entries: Sequence[Sequence[float]], batch: int, num_keep: int) -> torch.Tensor:
    """(B, K) int64 masks of the fragile bits, ToMe order. Entries are [b, bit, y, x, value] on the s x s grid."""
    side = math.isqrt(num_keep)
    mask = torch.zeros(batch, num_keep, dtype=torch.int64)
    for b, bit, y, x, _ in entries:
        mask[int(b), int(y) * side + int(x)] |= 1 << int(bit)
    return mask


def _popcount(x: torch.Tensor) -> int:
    return sum((v).bit_count() for v in x.flatten().tolist())


def _compare_one(variant: str, model: MergeVQ, x: torch.Tensor, ref: dict[str, torch.Tensor], *,
                 merge_num: int, fragile: Sequence[Sequence[float]]) -> ParityResult:
    batch = x.shape[0]
    num_keep = model.config.num_keep
    order = ref["canonical_order"]  # (B, K)
    with torch.no_grad():
        model.eval()
        enc = model.encode(x, num_keep)
        ref_idx = _gather_tokens(ref["indices"].reshape(batch, num_keep), order)
        allowed = _gather_tokens(_fragile_mask(fragile, batch, num_keep), order)
        xor = enc.indices ^ ref_idx
        index_mismatches = int(((xor & ~allowed) != 0).sum())
        ref_z = _gather_tokens(ref["enc_features"].flatten(2).transpose(1, 2), order)  # (B, K, d)
        ref_codes = torch.where(ref_z > 0, 1.0, -1.0)
        ref_assign = ref["assign_canonical"]
        crop = ref["recon"].shape[-2:]

        def recon_error(codes: torch.Tensor, assign: torch.Tensor) -> torch.Tensor:
            ours = model.decode_codes(codes, assign)[..., :crop[0], :crop[1]]
            if ours.shape != ref["recon"].shape:
                raise ValueError(f"reconstruction {tuple(ours.shape)} vs reference {tuple(ref['recon'].shape)}")
            return (ours.double() - ref["recon"].double()).abs()

        cls_max_abs = None
        if "cls_head_out" in ref:
            if model.cls_head is None:
                raise ConfigError(f"{variant}: the reference has a [CLS] head output but the model has no head")
            cls_max_abs = _max_abs(model.cls_head(enc.cls), ref["cls_head_out"])
        assign_equal = enc.assign.shape == ref_assign.shape and bool((enc.assign == ref_assign).all())
        z_max_abs = _max_abs(enc.z, ref_z)
        recon_ref = recon_error(ref_codes, ref_assign)
        same_codes = torch.equal(enc.codes, ref_codes) and assign_equal
        recon_own = recon_ref.max().item() if same_codes else recon_error(enc.codes, enc.assign).max().item()

        # LFQ losses as in training: the quantizer in train mode on the same z (our encoder has no
        # train-mode behaviour here: no dropout, drop_path 0, fixed K)
        quantizer = model.quantizer
        quantizer.train()
        try:
            train = quantizer(enc.z)
        finally:
            quantizer.eval()
        probs = mean_code_probs(enc.z.double(), temperature=model.config.entropy_temperature)
        official = -(probs * (probs + OFFICIAL_EPS).log()).sum().item()
        positive = probs[probs > 0]
        exact = -(positive * positive.log()).sum().item()
        stored = ref["train_codebook_entropy"].item()
    return ParityResult(
        variant=variant, merge_num=merge_num, num_keep=num_keep, index_mismatches=index_mismatches,
        fragile_flips=_popcount(xor & allowed), assign_equal=assign_equal, z_max_abs=z_max_abs,
        cls_max_abs=cls_max_abs, recon_max_abs=recon_ref.max().item(), recon_mean_abs=recon_ref.mean().item(),
        recon_own_max_abs=recon_own,
        per_sample_entropy_diff=train.per_sample_entropy.item() - ref["train_per_sample_entropy"].item(),
        commitment_diff=train.commit_loss.item() - ref["train_commitment"].item(),
        codebook_formula_diff=official - stored,
        codebook_excess_diff=(train.codebook_entropy.item() - stored) - (exact - official),
        codebook_excess=exact - official,
    )


def compare_reference(folder: str | Path, *, merge_nums: Sequence[int] | None = None) -> list[ParityResult]:
    """One :class:`ParityResult` per (variant folder, M) under ``folder`` (a variant folder or a folder of
    them); ``merge_nums``: only these M (default: every M with an ``outputs_m<M>`` file)."""
    results = []
    with _highest_precision():
        for path in reference_folders(folder):
            meta = json.loads((path / "config.json").read_text(encoding="utf-8"))
            variant = str(meta.get("variant", path.name))
            state = _load(path / "state_dict.safetensors")
            x = _load(path / "inputs.safetensors")["images"].float()
            available = sorted(int(m) for m in set(meta.get("merge_nums", {}).values())
                               if (path / f"outputs_m{m}.safetensors").is_file())
            chosen = available if merge_nums is None else [m for m in available if m in set(merge_nums)]
            for m in chosen:
                args = copy.deepcopy(meta["constructor_args"])
                args["ddconfig"]["merge_num"] = m
                config = config_from_official(args)
                model = MergeVQ(config=config)
                model.load_state_dict(convert_state_dict(state, config, weights="raw").state_dict, strict=True)
                fragile = meta.get("per_merge", {}).get(str(m), {}).get("fragile_features_abs_below_1e-4", [])
                results.append(_compare_one(variant, model, x, _load(path / f"outputs_m{m}.safetensors"),
                                            merge_num=m, fragile=fragile))
    return results


def _row(r: ParityResult) -> str:
    cls = "-" if r.cls_max_abs is None else f"{r.cls_max_abs:.2e}"
    problems = r.problems()
    return (f"{r.variant:<6} {r.merge_num:>4} {r.num_keep:>4} {r.index_mismatches:>6} {r.fragile_flips:>7} "
            f"{'yes' if r.assign_equal else 'NO':>6} {r.z_max_abs:>9.2e} {cls:>9} {r.recon_max_abs:>9.2e} "
            f"{r.recon_mean_abs:>9.2e} "
            f"{r.recon_own_max_abs:>9.2e} {r.per_sample_entropy_diff:>+10.1e} {r.commitment_diff:>+10.1e} "
            f"{r.codebook_formula_diff:>+10.1e} {r.codebook_excess:>9.2e} {r.codebook_excess_diff:>+10.1e}  "
            f"{'ok' if not problems else 'FAIL: ' + '; '.join(problems)}")


HEADER = (f"{'var':<6} {'M':>4} {'K':>4} {'idx≠':>6} {'fragile':>7} {'assign':>6} {'z':>9} {'cls':>9} "
          f"{'recon':>9} {'recon_avg':>9} {'recon_e2e':>9} {'H_sample':>10} {'commit':>10} {'H_formula':>10} "
          f"{'H_excess':>9} "
          f"{'excess≠':>10}  verdict")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mergevq.tokenizer.official_parity",
                                     description="compare mergevq with the authors' reference tensors")
    parser.add_argument("folder", help="a reference folder (config.json ...) or a folder of them")
    parser.add_argument("--merge-nums", type=int, nargs="+", default=None, help="only these merge counts M")
    args = parser.parse_args(argv)
    try:
        results = compare_reference(args.folder, merge_nums=args.merge_nums)
    except (ConfigError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(HEADER)
    for r in results:
        print(_row(r))
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
