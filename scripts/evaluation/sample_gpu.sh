#!/usr/bin/env bash
# `mergevq sample` on every local GPU of this node, one process per device (torchrun); each process
# samples one contiguous share of the sample indices (the images do not depend on the device count).
#
#   sample_gpu.sh --ar AR --tokenizer TOK --out DIR [--per-class 50] [--cfg-scale S] [...]
#
# All arguments go to `mergevq sample --accelerator cuda` unchanged (see `mergevq sample --help`).
# Environment:
#   DEVICES_PER_NODE   processes (default: the visible devices; 1 if none)
#   NNODES             nodes (default 1); with NNODES > 1 also set NODE_RANK, MASTER_ADDR, MASTER_PORT
#                      and give every node the same, shared --out folder
#   MERGEVQ_PYTHON     interpreter (default: python)
#   MERGEVQ_DRY_RUN=1  print the launch line and exit
#   MERGEVQ_ACCELERATOR  cuda (default) or npu; sample_npu.sh sets npu
set -euo pipefail

python=${MERGEVQ_PYTHON:-python}
accelerator=${MERGEVQ_ACCELERATOR:-cuda}
if [[ $accelerator == npu ]]; then
  count='import torch, torch_npu; print(torch.npu.device_count() or 1)'
else
  count='import torch; print(torch.cuda.device_count() or 1)'
fi
devices=${DEVICES_PER_NODE:-$("$python" -c "$count")}
nnodes=${NNODES:-1}
if ((nnodes > 1)); then
  rendezvous=("--nnodes=$nnodes" "--node_rank=${NODE_RANK:?set NODE_RANK (0..NNODES-1)}"
              "--master_addr=${MASTER_ADDR:?set MASTER_ADDR}" "--master_port=${MASTER_PORT:?set MASTER_PORT}")
else
  rendezvous=(--standalone --nnodes=1)
fi
cmd=("$python" -m torch.distributed.run "${rendezvous[@]}" "--nproc_per_node=$devices"
     -m mergevq sample --accelerator "$accelerator" "$@")

if [[ -n ${MERGEVQ_DRY_RUN:-} && ${MERGEVQ_DRY_RUN} != 0 ]]; then
  printf '%q ' "${cmd[@]}"
  echo
  exit 0
fi
exec "${cmd[@]}"
