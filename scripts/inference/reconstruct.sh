#!/usr/bin/env bash
# `mergevq reconstruct` on every local device: original / reconstruction PNG pairs and merge-group
# pictures of a tokenizer at the given K values (DESIGN §6).
#
#   reconstruct.sh RUN_DIR OUT_DIR [K_LIST] [KEY=VALUE | CONFIG | --option ...]
#
# e.g. reconstruct.sh runs/GR_d64 recon/ 256,144,64 --folder my_photos/ eval.max_images=32
# Same launcher, environment (DEVICES_PER_NODE, MERGEVQ_PYTHON, MERGEVQ_DRY_RUN=1) and argument
# handling as scripts/evaluation/evaluation_mergevq.sh.
MERGEVQ_SUBCOMMAND=reconstruct exec "$(dirname "${BASH_SOURCE[0]}")/../evaluation/evaluation_mergevq.sh" "$@"
