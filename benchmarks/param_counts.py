"""Parameter counts of the MergeVQ presets against the DESIGN §4 table ("params enc/dec").

enc = stem + merging ViT + pre-quantisation head + [CLS] alignment head (the authors' encoder holds
that head); dec = decoder; our learned recovery is listed on its own (see mergevq/tokenizer/model.py). Built on the meta device, so
this takes a second and no memory. tests/test_model.py holds every preset within 2 %.

    python benchmarks/param_counts.py
"""

import torch

from mergevq.tokenizer.model import PAPER_PARAMS, PRESETS, MergeVQ


def main() -> None:
    print(f"{'preset':8} {'enc (M)':>8} {'paper':>6} {'diff':>7} {'dec (M)':>8} {'paper':>6} {'diff':>7} "
          f"{'cls head':>9} {'recovery':>9} {'total':>8}")
    with torch.device("meta"):
        for name, (enc, dec) in PAPER_PARAMS.items():
            c = MergeVQ(config=PRESETS[name]).parameter_counts()
            e, d = c["enc"] / 1e6, c["dec"] / 1e6
            print(f"{name:8} {e:8.2f} {enc:6.0f} {100 * (e / enc - 1):+6.2f}% {d:8.2f} {dec:6.0f} "
                  f"{100 * (d / dec - 1):+6.2f}% {c['cls_head'] / 1e6:9.2f} {c['recovery'] / 1e6:9.2f} {c['total'] / 1e6:8.2f}")


if __name__ == "__main__":
    main()
