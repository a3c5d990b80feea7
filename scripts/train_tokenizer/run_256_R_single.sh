#!/usr/bin/env bash
# R tokenizer (configs/tokenizer/R.yaml), one node, one process per local device. See _launch.sh.
exec "$(dirname "${BASH_SOURCE[0]}")/_launch.sh" single R "$@"
