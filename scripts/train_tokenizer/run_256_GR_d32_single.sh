#!/usr/bin/env bash
# GR_d32 tokenizer (configs/tokenizer/GR_d32.yaml), one node, one process per local device. See _launch.sh.
exec "$(dirname "${BASH_SOURCE[0]}")/_launch.sh" single GR_d32 "$@"
