#!/usr/bin/env bash
# Original / reconstruction PNG pairs and merge-group pictures of a tokenizer at the given K values,
# with `mergevq reconstruct` on every local device. Runs WITHOUT arguments, using the defaults below;
# any argument overrides its default, in any order (same handling as evaluation_mergevq.sh):
#
#   reconstruct.sh [RUN_DIR] [OUT_DIR] [K_LIST | --num-keep K_LIST] [KEY=VALUE ...]
#                  [--folder PATH | --demo] [--group-scale N] [--option ...]
#
#   RUN_DIR   a `mergevq train` run directory, an exported tokenizer folder or a checkpoint file
#   OUT_DIR   the output folder (the second positional, or --out)
# e.g. reconstruct.sh runs/GR_d64 recon/ 256,144,64 --folder my_photos/ eval.max_images=32
# Environment: DEVICES_PER_NODE, MERGEVQ_ACCELERATOR=npu, MERGEVQ_PYTHON, MERGEVQ_DRY_RUN=1.

# ---- edit these: the defaults of a run without arguments ("" = the value in the config) ----------
RUN_DIR="runs/GR_d64"  # the tokenizer: run directory (runs/<run.name> of `mergevq train`), export or .ckpt
OUT="visualize"        # output folder (replaced if it holds an earlier reconstruct output)
K_LIST=""              # e.g. "256,144,64"; "" = eval.num_keep of configs/evaluation/tokenizer_base.yaml
DATA_ROOT=""           # ImageNet folder holding val/; "" = the root in configs/data/imagenet.yaml
FOLDER=""              # a folder of your own images instead of ImageNet val ("" = ImageNet)
BATCH_SIZE=""          # images per forward pass and process; "" = eval.batch_size (32)
NUM_WORKERS=""         # DataLoader workers per process; "" = eval.num_workers (8)
MAX_IMAGES="50"        # only the first N images (the authors' --image_num 50); "" = all
# ---------------------------------------------------------------------------------------------------

set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../_launch_lib.sh"
script_path=scripts/inference/reconstruct.sh
eval_launch reconstruct.sh reconstruct "$@"
