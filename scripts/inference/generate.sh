#!/usr/bin/env bash
# The authors' name: an alias of scripts/evaluation/sample_gpu.sh in its TOTAL_RANK form, with their
# visualisation settings (one process, 8 samples of class 207, top-p 0.96, CFG 4.0, PNGs under
# visualize/); the MergeAR / tokenizer defaults are those at the top of sample_gpu.sh. Any option
# given here replaces its value (e.g. --classes 1 2 3 --out grid/); MERGEVQ_ACCELERATOR=npu for NPUs.
exec "$(dirname "${BASH_SOURCE[0]}")/../evaluation/sample_gpu.sh" 1 --per-class 8 --classes 207 --batch-size 8 \
  --temperature 1.0,1.0 --top-k 0,0 --top-p 0.96,0.96 --cfg-scale 4.0,4.0 --out visualize "$@"
