"""The stages of ``mergevq demo`` (the CLI module ``mergevq.cli.demo`` parses arguments and calls them).

* :mod:`mergevq.demo.tokenizer_stage`: train the tiny tokenizer, then the K sweep (PSNR, SSIM, LPIPS,
  rFID, codebook usage) and the pictures.
* :mod:`mergevq.demo.generator_stage`: extract codes with that tokenizer, train a tiny MergeAR, sample a
  grid per class with the compressed KV cache and compare its memory and speed with the full cache.

Each stage takes its inputs as arguments and returns a named result; printing is the caller's job
except for short progress lines.
"""
