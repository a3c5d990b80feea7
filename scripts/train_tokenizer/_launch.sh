#!/usr/bin/env bash
# Shared launcher behind scripts/train_tokenizer/run_256_<VARIANT>_{single,multi}.sh: trains
# configs/tokenizer/<VARIANT>.yaml with the one training launcher, `train_launch` in
# scripts/_launch_lib.sh (single node, the authors' multi-node form, SLURM, NPU; README "Launching on
# clusters"). Called by the thin per-variant scripts as:  _launch.sh single|multi VARIANT [ARGS...]
#
#   run_256_<VARIANT>_single.sh [KEY=VALUE ...] [--out DIR] [--resume auto|PATH] [--option ...]
#   NNODES=N run_256_<VARIANT>_multi.sh MASTER_ADDR MASTER_PORT NODE_RANK [KEY=VALUE ...] [--option ...]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../_launch_lib.sh"

if (($# < 2)) || [[ $1 != single && $1 != multi ]]; then
  echo "_launch.sh: internal use: _launch.sh single|multi VARIANT [ARGS...]" >&2
  exit 2
fi
mode=$1 variant=$2
shift 2
train_launch "run_256_${variant}_${mode}.sh" "$mode" "$LAUNCH_ROOT/configs/tokenizer/$variant.yaml" fixed "$@"
