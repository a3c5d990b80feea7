#!/usr/bin/env bash
# Stage 2 training data: `mergevq extract-codes` on every local device of this node, one process per
# device (torchrun); each process encodes one contiguous slice of the data set and writes one shard.
#
#   extract_codes.sh TOKENIZER OUT_DIR [KEY=VALUE ...] [--demo | --folder PATH | --config NAME] [--force]
#
# All arguments go to `mergevq extract-codes` unchanged (see `mergevq extract-codes --help`).
# Environment:
#   DEVICES_PER_NODE   processes (default: the visible accelerators, torch.accelerator.device_count(); 1 on CPU)
#   NNODES             nodes (default 1); with NNODES > 1 also set NODE_RANK, MASTER_ADDR, MASTER_PORT
#                      and give every node the same, shared OUT_DIR
#   MERGEVQ_PYTHON     interpreter (default: python)
#   MERGEVQ_DRY_RUN=1  print the launch line and exit
set -euo pipefail

python=${MERGEVQ_PYTHON:-python}
devices=${DEVICES_PER_NODE:-$("$python" -c 'import torch; a = torch.accelerator; print(a.device_count() if a.is_available() else 1)')}
nnodes=${NNODES:-1}
if ((nnodes > 1)); then
  rendezvous=("--nnodes=$nnodes" "--node_rank=${NODE_RANK:?set NODE_RANK (0..NNODES-1)}"
              "--master_addr=${MASTER_ADDR:?set MASTER_ADDR}" "--master_port=${MASTER_PORT:?set MASTER_PORT}")
else
  rendezvous=(--standalone --nnodes=1)
fi
cmd=("$python" -m torch.distributed.run "${rendezvous[@]}" "--nproc_per_node=$devices" -m mergevq extract-codes "$@")

if [[ -n ${MERGEVQ_DRY_RUN:-} && ${MERGEVQ_DRY_RUN} != 0 ]]; then
  printf '%q ' "${cmd[@]}"
  echo
  exit 0
fi
exec "${cmd[@]}"
