#!/usr/bin/env bash
# MergeAR (Stage 2) training on several nodes, the authors' positional form, once per node:
#
#   NNODES=N run_multi.sh MASTER_ADDR MASTER_PORT NODE_RANK [CONFIG] [KEY=VALUE ...] [--option ...]
#
# or once from a SLURM batch script (positional arguments optional, nodes = SLURM_JOB_NUM_NODES).
# CONFIG (or --config CONFIG): a file, or a name under configs/ (default ar/GR_L; the variants are
# configs/ar/{GR,G}_{B,L,XL}.yaml). Every run needs codes.root=/path/to/codes (the output folder of
# extract_codes.sh). Launcher: `train_launch` in scripts/_launch_lib.sh (environment, SLURM, NPU).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../_launch_lib.sh"
train_launch run_multi.sh multi ar/GR_L choosable "$@"
