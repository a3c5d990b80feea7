#!/usr/bin/env bash
# Stage 2 training data: `mergevq extract-codes` on every local device of this node, one process per
# device (torchrun); each process encodes one contiguous slice of the data set and writes one shard.
#
#   extract_codes.sh TOKENIZER OUT_DIR [KEY=VALUE ...] [--demo | --folder PATH | --config NAME] [--force]
#
# All arguments go to `mergevq extract-codes` unchanged (see `mergevq extract-codes --help`).
# Environment:
#   DEVICES_PER_NODE   processes (default: the visible devices, from CUDA_VISIBLE_DEVICES /
#                      ASCEND_RT_VISIBLE_DEVICES, else nvidia-smi / npu-smi; 1 on CPU; NPUs only with
#                      MERGEVQ_ACCELERATOR=npu)
#   NNODES             nodes (default 1); with NNODES > 1 also set NODE_RANK, MASTER_ADDR, MASTER_PORT
#                      and give every node the same, shared OUT_DIR
#   MERGEVQ_PYTHON     interpreter (default: python)
#   MERGEVQ_DRY_RUN=1  print the launch line and exit
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../_launch_lib.sh"

script=extract_codes.sh
python=${MERGEVQ_PYTHON:-python}
slurm=0
resolve_devices "$@"
set_rendezvous
echo "$script: $(world_size_line "$nnodes" "$devices")" >&2
cmd=("$python" -m torch.distributed.run "${rendezvous[@]}" "--nproc_per_node=$devices" -m mergevq extract-codes "$@")

run_or_print "$script" "" "${cmd[@]}"
