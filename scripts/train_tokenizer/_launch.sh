#!/usr/bin/env bash
# Shared launcher behind scripts/train_tokenizer/run_256_<VARIANT>_{single,multi}.sh (DESIGN §7, §8).
# It computes one launch line for `mergevq train configs/tokenizer/<VARIANT>.yaml`, prints it, and
# execs it. Called by the thin per-variant scripts as:  _launch.sh single|multi VARIANT [ARGS...]
#
#   single:  run_256_<VARIANT>_single.sh [KEY=VALUE ...] [--run-dir DIR] [--resume auto|PATH]
#            one node, one process per local device:
#            torchrun --standalone --nnodes=1 --nproc_per_node=N -m mergevq train ...
#   multi:   run_256_<VARIANT>_multi.sh MASTER_ADDR MASTER_PORT NODE_RANK [KEY=VALUE ...] [--run-dir ...]
#            run once on every node (NODE_RANK 0..NNODES-1):
#            torchrun --nnodes=NNODES --nproc_per_node=N --node_rank=R --master_addr=A --master_port=P \
#                     -m mergevq train ...
#
# Every launch appends `trainer.num_nodes=NNODES trainer.devices=N` to the config overrides, then the
# script's own arguments, so a user override always wins, then `--resume auto` (a requeued job
# continues its run) unless the arguments say --resume or --overwrite.
#
# Under SLURM (SLURM_JOB_ID set) both modes use `srun --nodes=NNODES --ntasks-per-node=N python -m
# mergevq train ...` instead: run the script ONCE from the batch script; srun starts every task and
# Lightning reads the ranks from SLURM. MASTER_ADDR/MASTER_PORT are then optional (exported if given;
# otherwise Lightning derives them from the node list and job id) and NODE_RANK is not used. NNODES
# defaults to SLURM_JOB_NUM_NODES.
#
# Environment:
#   NNODES                 number of nodes (multi; default 1, or SLURM_JOB_NUM_NODES under SLURM)
#   DEVICES_PER_NODE       processes per node (multi default 8; single default: the visible devices,
#                          counted from CUDA_VISIBLE_DEVICES / ASCEND_RT_VISIBLE_DEVICES, else
#                          `nvidia-smi -L`, else `npu-smi info -l`, else 1)
#   MERGEVQ_PYTHON         interpreter that runs torchrun and the workers (default: python)
#   MERGEVQ_EXTRA_CONFIG   extra YAML file(s), whitespace-separated, merged after the variant's config
#                          (e.g. configs/trainer/npu8_bf16.yaml, or your own overrides file)
#   MERGEVQ_DRY_RUN=1      print the launch line on stdout and exit without running it
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../_launch_lib.sh"

usage() {
  local script=$1 mode=$2
  if [[ $mode == multi ]]; then
    echo "usage: $script MASTER_ADDR MASTER_PORT NODE_RANK [KEY=VALUE ...] [--run-dir DIR] [--resume auto|PATH]"
    echo "  run once per node with NODE_RANK 0..NNODES-1; environment: NNODES (default 1),"
    echo "  DEVICES_PER_NODE (default 8), MERGEVQ_PYTHON, MERGEVQ_EXTRA_CONFIG, MERGEVQ_DRY_RUN=1"
  else
    echo "usage: $script [KEY=VALUE ...] [--run-dir DIR] [--resume auto|PATH]"
    echo "  environment: DEVICES_PER_NODE (default: all visible devices), MERGEVQ_PYTHON,"
    echo "  MERGEVQ_EXTRA_CONFIG, MERGEVQ_DRY_RUN=1"
  fi
  echo "  (details: scripts/train_tokenizer/_launch.sh)"
}

die_usage() {
  echo "$1: error: $3" >&2
  usage "$1" "$2" >&2
  exit 2
}


if (($# < 2)) || [[ $1 != single && $1 != multi ]]; then
  echo "_launch.sh: internal use: _launch.sh single|multi VARIANT [ARGS...]" >&2
  exit 2
fi
mode=$1 variant=$2
shift 2
script="run_256_${variant}_${mode}.sh"
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
config="$root/configs/tokenizer/$variant.yaml"
[[ -f $config ]] || { echo "$script: error: config not found: $config" >&2; exit 2; }
python=${MERGEVQ_PYTHON:-python}
if [[ ${1:-} == -h || ${1:-} == --help ]]; then
  usage "$script" "$mode"
  exit 0
fi

slurm=0
[[ -n ${SLURM_JOB_ID:-} ]] && slurm=1

# --- where to start: nodes, processes per node, rendezvous ---------------------------------------
addr="" port="" rank=0
if [[ $mode == multi ]]; then
  if ((slurm)) && { (($# == 0)) || [[ $1 == *=* || $1 == -* ]]; }; then
    :  # SLURM: the positional arguments are optional
  else
    (($# >= 3)) || die_usage "$script" "$mode" "expected MASTER_ADDR MASTER_PORT NODE_RANK, got $# argument(s)"
    addr=$1 port=$2 rank=$3
    shift 3
    [[ -n $addr && $addr != *=* && $addr != -* ]] || die_usage "$script" "$mode" "MASTER_ADDR '$addr' is not a host name or address"
    [[ $port =~ ^[0-9]+$ ]] && ((10#$port >= 1 && 10#$port <= 65535)) || die_usage "$script" "$mode" "MASTER_PORT '$port' is not a port number (1-65535)"
    [[ $rank =~ ^(0|[1-9][0-9]*)$ ]] || die_usage "$script" "$mode" "NODE_RANK '$rank' is not a non-negative integer"
  fi
  if ((slurm)); then
    nnodes=${NNODES:-${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}}
  else
    nnodes=${NNODES:-1}
  fi
  devices=${DEVICES_PER_NODE:-8}
else
  nnodes=1
  devices=${DEVICES_PER_NODE:-$(count_local_devices)}
fi
is_count "$nnodes" || die_usage "$script" "$mode" "NNODES '$nnodes' is not a positive integer"
is_count "$devices" || die_usage "$script" "$mode" "DEVICES_PER_NODE '$devices' is not a positive integer"
if [[ $mode == multi ]] && ! ((slurm)) && ((rank >= nnodes)); then
  die_usage "$script" "$mode" "NODE_RANK $rank is out of range for NNODES=$nnodes (0..$((nnodes - 1)))"
fi

# --- what to run: mergevq train CONFIG [EXTRA ...] overrides "$@" ----------------------------------
extra=()
[[ -n ${MERGEVQ_EXTRA_CONFIG:-} ]] && read -r -a extra <<<"$MERGEVQ_EXTRA_CONFIG"
set_default_resume "$@"
train=(mergevq train "$config" ${extra[@]+"${extra[@]}"} "trainer.num_nodes=$nnodes" "trainer.devices=$devices" "$@"
       ${resume[@]+"${resume[@]}"})

if ((slurm)); then
  [[ -n $addr ]] && export MASTER_ADDR=$addr MASTER_PORT=$port
  cmd=(srun "--nodes=$nnodes" "--ntasks-per-node=$devices" "$python" -m "${train[@]}")
elif [[ $mode == multi ]]; then
  cmd=("$python" -m torch.distributed.run "--nnodes=$nnodes" "--nproc_per_node=$devices"
       "--node_rank=$rank" "--master_addr=$addr" "--master_port=$port" -m "${train[@]}")
else
  cmd=("$python" -m torch.distributed.run --standalone --nnodes=1 "--nproc_per_node=$devices" -m "${train[@]}")
fi

run_or_print "$script" "${cmd[@]}"
