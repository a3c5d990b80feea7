#!/usr/bin/env bash
# MergeAR (Stage 2) training on one node, one process per local device:
#
#   run_single.sh [CONFIG] [KEY=VALUE ...] [--out DIR] [--resume auto|PATH] [--option ...]
#
# CONFIG (or --config CONFIG): a file, or a name under configs/ (default ar/GR_L; the variants are
# configs/ar/{GR,G}_{B,L,XL}.yaml). Every run needs codes.root=/path/to/codes (the output folder of
# extract_codes.sh). Launcher: `train_launch` in scripts/_launch_lib.sh (environment, SLURM, NPU).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../_launch_lib.sh"
train_launch run_single.sh single ar/GR_L choosable "$@"
