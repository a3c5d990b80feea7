#!/usr/bin/env bash
# The one tokenizer evaluation script: rFID, PSNR, SSIM, LPIPS, codebook usage for a sweep of K, with
# `mergevq evaluate-tokenizer` on every local device of this node (one process per device; the data
# set is sharded, the results equal one process's). Like the authors' script it runs WITHOUT
# arguments, using the defaults below; any argument overrides its default, in any order:
#
#   evaluation_mergevq.sh [RUN_DIR] [K_LIST | --num-keep K_LIST] [KEY=VALUE ...] [CONFIG.yaml ...]
#                         [--folder PATH | --demo] [--out DIR] [--batch-size N] [--raw] [--option ...]
#
#   RUN_DIR   a `mergevq train` run directory, an exported tokenizer folder or a checkpoint file
#             (the first positional that is not a K list, an override or a .yaml file)
#   K_LIST    kept-token counts, e.g. 256,196,144,100,64 (a bare list anywhere, or --num-keep)
#   the rest  forwarded to `mergevq evaluate-tokenizer` (see `mergevq evaluate-tokenizer --help`)
#
# Environment: DEVICES_PER_NODE (default: the visible devices), MERGEVQ_ACCELERATOR=npu (count NPUs),
# MERGEVQ_PYTHON, MERGEVQ_DRY_RUN=1 (print the command, run nothing). Details: scripts/_launch_lib.sh.

# ---- edit these: the defaults of a run without arguments ("" = the value in the config) ----------
RUN_DIR="runs/GR_d64"  # the tokenizer: run directory (runs/<run.name> of `mergevq train`), export or .ckpt
K_LIST=""              # e.g. "256,196,144,100,64"; "" = eval.num_keep of configs/evaluation/tokenizer_base.yaml
DATA_ROOT=""           # ImageNet folder holding val/; "" = the root in configs/data/imagenet.yaml
FOLDER=""              # a folder of images to evaluate on instead of ImageNet val ("" = ImageNet)
BATCH_SIZE=""          # images per forward pass and process; "" = eval.batch_size (32)
NUM_WORKERS=""         # DataLoader workers per process; "" = eval.num_workers (8)
MAX_IMAGES=""          # only the first N images; "" = all (50,000 for ImageNet val)
OUT=""                 # output folder; "" = eval_tokenizer/ next to the tokenizer
# ---------------------------------------------------------------------------------------------------

set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../_launch_lib.sh"
script_path=scripts/evaluation/evaluation_mergevq.sh
eval_launch evaluation_mergevq.sh evaluate-tokenizer "$@"
