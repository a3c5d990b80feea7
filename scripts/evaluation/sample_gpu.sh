#!/usr/bin/env bash
# `mergevq sample` on every local GPU of this node, one process per device (torchrun); each process
# samples one contiguous share of the sample indices (the images do not depend on the device count).
# Two forms:
#
#   sample_gpu.sh --ar AR --tokenizer TOK --out DIR [--per-class 50] [--cfg-scale S] [...]
#       all arguments go to `mergevq sample --accelerator cuda` unchanged (`mergevq sample --help`)
#   sample_gpu.sh TOTAL_RANK [--option VALUE ...]
#       the authors' form: TOTAL_RANK processes in all, sampling the recipe below (edit it); an option
#       given after TOTAL_RANK replaces its default. TOTAL_RANK <= devices per node (DEVICES_PER_NODE,
#       default: the visible devices): one node, TOTAL_RANK processes (the authors: GPUs 0..TOTAL_RANK-1).
#       More: TOTAL_RANK / DEVICES_PER_NODE nodes (a whole multiple), run once per node with NODE_RANK,
#       MASTER_ADDR, MASTER_PORT set (and NNODES, if set, equal to that count).
#
# Environment: DEVICES_PER_NODE, NNODES (first form: default 1; > 1 also needs NODE_RANK, MASTER_ADDR,
# MASTER_PORT and one shared output folder), MERGEVQ_PYTHON, MERGEVQ_DRY_RUN=1 (print the line only),
# MERGEVQ_ACCELERATOR (cuda, the default, or npu; sample_npu.sh sets npu).

# ---- edit these: the recipe of `sample_gpu.sh TOTAL_RANK` (the authors' MergeAR-XL settings) -------
AR="runs/mergear_GR_XL"  # --ar: MergeAR run directory (runs/<run.name>), export folder or .ckpt
TOKENIZER="runs/GR_d64"  # --tokenizer: the tokenizer whose codes MergeAR was trained on
OUT="samples/mergear_GR_XL"  # --out: output folder (shared by every node)
PER_CLASS="50"           # --per-class: 50 x 1000 classes = the 50,000 images of gFID
BATCH_SIZE="50"          # --batch-size: samples per forward pass and process
SEED="42"                # --seed: global seed (sample i always gets the same seed)
CFG_SCALE="1.75,1.85"    # --cfg-scale (the authors' XL; L: 1.9,1.9; B: 1.9,2.0)
TEMPERATURE="1.1,1.0"    # --temperature, one per sub-token (the authors' XL and L; B: 1.0,1.0)
TOP_K="0,0"              # --top-k, one per sub-token (0 = off)
TOP_P="1.0,1.0"          # --top-p, one per sub-token (1.0 = off)
# ---------------------------------------------------------------------------------------------------

set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../_launch_lib.sh"

accelerator=${MERGEVQ_ACCELERATOR:-cuda}
script=$([[ $accelerator == npu ]] && echo sample_npu.sh || echo sample_gpu.sh)
script_path=scripts/evaluation/$script
python=${MERGEVQ_PYTHON:-python}
slurm=0

if (($# > 0)) && [[ $1 =~ ^[0-9]+$ ]]; then
  total=$1
  shift
  is_count "$total" || die "TOTAL_RANK '$total' is not a positive integer (the number of processes)"
  resolve_devices "$@"
  if ((total <= devices)); then
    [[ -z ${NNODES:-} || $NNODES == 1 ]] || die "NNODES=$NNODES but TOTAL_RANK $total fits on one node of $devices device(s): unset NNODES"
    devices=$total
    export NNODES=1
  else
    ((total % devices == 0)) || die "TOTAL_RANK $total is not a whole number of nodes of DEVICES_PER_NODE=$devices"
    [[ -z ${NNODES:-} || $NNODES == $((total / devices)) ]] || die "NNODES=$NNODES but TOTAL_RANK $total / DEVICES_PER_NODE $devices = $((total / devices)) nodes"
    export NNODES=$((total / devices))
    [[ -n ${NODE_RANK:-} && -n ${MASTER_ADDR:-} && -n ${MASTER_PORT:-} ]] || die "TOTAL_RANK $total is $NNODES nodes of $devices device(s) (DEVICES_PER_NODE, default: the visible devices): run once per node with NODE_RANK, MASTER_ADDR and MASTER_PORT set, or set DEVICES_PER_NODE"
  fi
  # the recipe above, less what the arguments give
  recipe=()
  for pair in "--ar=$AR" "--tokenizer=$TOKENIZER" "--out=$OUT" "--per-class=$PER_CLASS" "--batch-size=$BATCH_SIZE" \
              "--seed=$SEED" "--cfg-scale=$CFG_SCALE" "--temperature=$TEMPERATURE" "--top-k=$TOP_K" "--top-p=$TOP_P"; do
    option=${pair%%=*} value=${pair#*=}
    [[ -z $value ]] && continue
    option_value "$option" "$@" >/dev/null && continue
    recipe+=("$option" "$value")
  done
  for default in AR TOKENIZER; do
    option=--${default,,}
    if ! option_value "$option" "$@" >/dev/null; then
      [[ -e ${!default} ]] || die "$default '${!default}' does not exist: edit $default at the top of $script_path or give $option"
    fi
  done
  set -- ${recipe[@]+"${recipe[@]}"} "$@"
else
  resolve_devices "$@"
fi
set_rendezvous
echo "$script: $(world_size_line "$nnodes" "$devices")" >&2
cmd=("$python" -m torch.distributed.run "${rendezvous[@]}" "--nproc_per_node=$devices"
     -m mergevq sample --accelerator "$accelerator" "$@")

run_or_print "$script" "" "${cmd[@]}"
