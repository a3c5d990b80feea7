#!/usr/bin/env bash
# The one evaluation entry point (DESIGN §6): `mergevq evaluate-tokenizer` on every local device.
#
#   evaluation_mergevq.sh RUN_DIR [K_LIST] [KEY=VALUE | CONFIG | --option ...]
#
#   RUN_DIR   a `mergevq train` run directory, an exported tokenizer folder or a checkpoint file
#   K_LIST    kept-token counts to sweep, e.g. 256,196,144,100,64 (default: eval.num_keep of the config)
#   the rest  passed to `mergevq evaluate-tokenizer`: overrides such as
#             data.params.validation.params.root=/data/imagenet eval.batch_size=64 eval.max_images=10000,
#             extra config files, and options (--folder PATH, --demo, --out DIR, --raw)
#
# Launch line (one process per local device; the data set is sharded, results equal one process's):
#   torchrun --standalone --nnodes=1 --nproc_per_node=N -m mergevq evaluate-tokenizer [options] \
#            [--num-keep K_LIST] RUN_DIR [overrides]
# Options are moved before RUN_DIR, so they may be given anywhere.
#
# Environment:
#   DEVICES_PER_NODE   processes (default: the visible devices, counted from CUDA_VISIBLE_DEVICES /
#                      ASCEND_RT_VISIBLE_DEVICES, else `nvidia-smi -L`, else 1)
#   MERGEVQ_PYTHON     interpreter that runs torchrun and the workers (default: python)
#   MERGEVQ_DRY_RUN=1  print the launch line on stdout and exit without running it
#   MERGEVQ_SUBCOMMAND internal: the mergevq command (scripts/inference/reconstruct.sh sets `reconstruct`)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../_launch_lib.sh"

command=${MERGEVQ_SUBCOMMAND:-evaluate-tokenizer}
script=$([[ $command == reconstruct ]] && echo reconstruct.sh || echo evaluation_mergevq.sh)
usage() {
  if [[ $command == reconstruct ]]; then
    echo "usage: $script RUN_DIR OUT_DIR [K_LIST] [KEY=VALUE | CONFIG | --option ...]"
  else
    echo "usage: $script RUN_DIR [K_LIST] [KEY=VALUE | CONFIG | --option ...]"
  fi
  echo "  environment: DEVICES_PER_NODE, MERGEVQ_PYTHON, MERGEVQ_DRY_RUN=1 (details: scripts/evaluation/evaluation_mergevq.sh)"
}
die_usage() { echo "$script: error: $1" >&2; usage >&2; exit 2; }


if [[ ${1:-} == -h || ${1:-} == --help ]]; then usage; exit 0; fi
(($# >= 1)) || die_usage "expected RUN_DIR"
run_dir=$1
shift
[[ $run_dir != -* && $run_dir != *=* ]] || die_usage "RUN_DIR '$run_dir' looks like an option or override"
[[ -e $run_dir ]] || die_usage "RUN_DIR '$run_dir' does not exist"
options=()
if [[ $command == reconstruct ]]; then
  (($# >= 1)) && [[ $1 != -* && $1 != *=* ]] || die_usage "expected OUT_DIR after RUN_DIR"
  options+=(--out "$1")
  shift
fi
if (($# >= 1)) && [[ $1 =~ ^[0-9]+(,[0-9]+)*$ ]]; then
  options+=(--num-keep "$1")
  shift
fi
positionals=()
while (($# > 0)); do
  case $1 in
    --folder|--out|--num-keep|--group-scale)
      (($# >= 2)) || die_usage "$1 needs a value"
      options+=("$1" "$2")
      shift 2 ;;
    -*) options+=("$1"); shift ;;
    *) positionals+=("$1"); shift ;;
  esac
done

devices=${DEVICES_PER_NODE:-$(count_local_devices)}
[[ $devices =~ ^[1-9][0-9]*$ ]] || die_usage "DEVICES_PER_NODE '$devices' is not a positive integer"
python=${MERGEVQ_PYTHON:-python}
cmd=("$python" -m torch.distributed.run --standalone --nnodes=1 "--nproc_per_node=$devices"
     -m mergevq "$command" ${options[@]+"${options[@]}"} "$run_dir" ${positionals[@]+"${positionals[@]}"})

run_or_print "$script" "${cmd[@]}"
