#!/usr/bin/env bash
# MergeAR (Stage 2) training launcher, one launch per node (DESIGN §7, §8):
#
#   run.sh MASTER_ADDR MASTER_PORT NODE_RANK [CONFIG] [KEY=VALUE ...] [--run-dir DIR] [--resume auto|PATH]
#
# CONFIG: a config file, or a name under configs/ (default: ar/GR_L, MergeAR-L on GR tokens); the
# variants are configs/ar/{GR,G}_{B,L,XL}.yaml. Every run needs codes.root=/path/to/codes (the output
# folder of `mergevq extract-codes`). Run it once on every node with NODE_RANK 0..NNODES-1; it execs
#
#   $MERGEVQ_PYTHON -m torch.distributed.run --nnodes=NNODES --nproc_per_node=DEVICES_PER_NODE \
#       --node_rank=NODE_RANK --master_addr=MASTER_ADDR --master_port=MASTER_PORT \
#       -m mergevq train CONFIG [$MERGEVQ_EXTRA_CONFIG ...] trainer.num_nodes=NNODES \
#       trainer.devices=DEVICES_PER_NODE [KEY=VALUE ...] [--run-dir ...] --resume auto
#
# (the user's arguments come last, so an override always wins), then `--resume auto` (a requeued job
# continues its run) unless the arguments say --resume or --overwrite.
#
# Environment:
#   NNODES                 number of nodes (default 1)
#   DEVICES_PER_NODE       processes (GPUs / NPUs) per node (default 8)
#   MERGEVQ_PYTHON         interpreter that runs torchrun and the workers (default: python)
#   MERGEVQ_EXTRA_CONFIG   extra YAML file(s), whitespace-separated, merged after CONFIG
#                          (e.g. configs/trainer/npu8_bf16.yaml for Ascend NPUs)
#   MERGEVQ_DRY_RUN=1      print the launch line on stdout and exit without running it
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../_launch_lib.sh"

script=run.sh
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

usage() {
  echo "usage: $script MASTER_ADDR MASTER_PORT NODE_RANK [CONFIG] [KEY=VALUE ...] [--run-dir DIR] [--resume auto|PATH]"
  echo "  CONFIG: a file or a name under configs/ (default ar/GR_L); set codes.root=/path/to/codes"
  echo "  environment: NNODES (default 1), DEVICES_PER_NODE (default 8), MERGEVQ_PYTHON,"
  echo "  MERGEVQ_EXTRA_CONFIG, MERGEVQ_DRY_RUN=1 (details: scripts/train_autoregressive/run.sh)"
}

die_usage() {
  echo "$script: error: $1" >&2
  usage >&2
  exit 2
}


if [[ ${1:-} == -h || ${1:-} == --help ]]; then
  usage
  exit 0
fi

(($# >= 3)) || die_usage "expected MASTER_ADDR MASTER_PORT NODE_RANK, got $# argument(s)"
addr=$1 port=$2 rank=$3
shift 3
[[ -n $addr && $addr != *=* && $addr != -* ]] || die_usage "MASTER_ADDR '$addr' is not a host name or address"
[[ $port =~ ^[0-9]+$ ]] && ((10#$port >= 1 && 10#$port <= 65535)) || die_usage "MASTER_PORT '$port' is not a port number (1-65535)"
[[ $rank =~ ^(0|[1-9][0-9]*)$ ]] || die_usage "NODE_RANK '$rank' is not a non-negative integer"

nnodes=${NNODES:-1}
devices=${DEVICES_PER_NODE:-8}
is_count "$nnodes" || die_usage "NNODES '$nnodes' is not a positive integer"
is_count "$devices" || die_usage "DEVICES_PER_NODE '$devices' is not a positive integer"
((rank < nnodes)) || die_usage "NODE_RANK $rank is out of range for NNODES=$nnodes (0..$((nnodes - 1)))"

# The optional CONFIG: the next argument unless it is an override (KEY=VALUE) or an option (--...).
name=ar/GR_L
if (($# > 0)) && [[ $1 != *=* && $1 != -* ]]; then
  name=$1
  shift
fi
if [[ -f $name ]]; then
  config=$name
elif [[ -f $root/configs/$name.yaml ]]; then
  config=$root/configs/$name.yaml
elif [[ -f $root/configs/$name ]]; then
  config=$root/configs/$name
else
  die_usage "config not found: $name (a file, or a name under $root/configs/)"
fi

extra=()
[[ -n ${MERGEVQ_EXTRA_CONFIG:-} ]] && read -r -a extra <<<"$MERGEVQ_EXTRA_CONFIG"
python=${MERGEVQ_PYTHON:-python}
set_default_resume "$@"
cmd=("$python" -m torch.distributed.run "--nnodes=$nnodes" "--nproc_per_node=$devices"
     "--node_rank=$rank" "--master_addr=$addr" "--master_port=$port"
     -m mergevq train "$config" ${extra[@]+"${extra[@]}"} "trainer.num_nodes=$nnodes" "trainer.devices=$devices" "$@"
     ${resume[@]+"${resume[@]}"})

run_or_print "$script" "${cmd[@]}"
