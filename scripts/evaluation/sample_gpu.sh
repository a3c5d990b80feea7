#!/usr/bin/env bash
# `mergevq sample` on every local GPU of this node, one process per device (torchrun); each process
# samples one contiguous share of the sample indices (the images do not depend on the device count).
#
#   sample_gpu.sh --ar AR --tokenizer TOK --out DIR [--per-class 50] [--cfg-scale S] [...]
#
# All arguments go to `mergevq sample --accelerator cuda` unchanged (see `mergevq sample --help`).
# Environment:
#   DEVICES_PER_NODE   processes (default: the visible devices, from CUDA_VISIBLE_DEVICES /
#                      ASCEND_RT_VISIBLE_DEVICES, else nvidia-smi / npu-smi; 1 if none)
#   NNODES             nodes (default 1); with NNODES > 1 also set NODE_RANK, MASTER_ADDR, MASTER_PORT
#                      and give every node the same, shared --out folder
#   MERGEVQ_PYTHON     interpreter (default: python)
#   MERGEVQ_DRY_RUN=1  print the launch line and exit
#   MERGEVQ_ACCELERATOR  cuda (default) or npu; sample_npu.sh sets npu
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../_launch_lib.sh"

python=${MERGEVQ_PYTHON:-python}
accelerator=${MERGEVQ_ACCELERATOR:-cuda}
devices=${DEVICES_PER_NODE:-$(count_local_devices)}
set_rendezvous
cmd=("$python" -m torch.distributed.run "${rendezvous[@]}" "--nproc_per_node=$devices"
     -m mergevq sample --accelerator "$accelerator" "$@")

run_or_print sample_gpu.sh "${cmd[@]}"
