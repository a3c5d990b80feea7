"""``mergevq evaluate-tokenizer`` (placeholder until issue #5 lands)."""

from mergevq.cli import pending

_COMMAND = pending.command("evaluate-tokenizer", "rFID / PSNR / SSIM / LPIPS / codebook usage over a K sweep", 5)
add_parser = _COMMAND.add_parser
