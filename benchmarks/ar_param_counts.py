"""Parameter counts of the MergeAR presets (DESIGN §5: B 12x768, L 24x1024 ~343M, XL 36x1280).

Built on the meta device, so this takes a second and no memory. tests/test_ar_model.py pins the counts.

    python benchmarks/ar_param_counts.py
"""

import torch

from mergevq.ar.model import PRESETS, MergeAR

PAPER_M = {"L": 343.0}  # MergeAR-L in the paper


def main() -> None:
    print(f"{'preset':6} {'depth':>5} {'dim':>5} {'heads':>5} {'intra':>5} {'L':>4} {'total (M)':>10} "
          f"{'decoder':>8} {'intra':>7} {'embed+heads':>11} {'paper':>6}")
    with torch.device("meta"):
        for name, config in PRESETS.items():
            model = MergeAR(config=config)

            def count(*modules) -> float:
                return sum(p.numel() for m in modules for p in m.parameters()) / 1e6

            total = model.parameter_count() / 1e6
            decoder = count(model.blocks, model.norm)
            intra = count(model.intra_blocks, model.intra_norm, model.intra_embeddings)
            paper = f"{PAPER_M[name]:6.0f}" if name in PAPER_M else f"{'':>6}"
            print(f"{name:6} {config.depth:>5} {config.dim:>5} {config.heads:>5} {config.intra_depth:>5} "
                  f"{config.num_tokens:>4} {total:>10.2f} {decoder:>8.2f} {intra:>7.2f} "
                  f"{total - decoder - intra:>11.2f} {paper}")


if __name__ == "__main__":
    main()
