#!/usr/bin/env bash
# MergeAR (Stage 2) training, the authors' form: the same launcher as run_multi.sh (once per node,
# NNODES=N set on every node, or once under SLURM):
#
#   NNODES=N run.sh MASTER_ADDR MASTER_PORT NODE_RANK [CONFIG] [KEY=VALUE ...] [--option ...]
#
# CONFIG defaults to ar/GR_L; see run_multi.sh and scripts/_launch_lib.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../_launch_lib.sh"
train_launch run.sh multi ar/GR_L choosable "$@"
