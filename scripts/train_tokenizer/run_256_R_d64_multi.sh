#!/usr/bin/env bash
# The authors' name: an alias of run_256_R_multi.sh (the R tokenizer, configs/tokenizer/R.yaml, codebook dim 64).
exec "$(dirname "${BASH_SOURCE[0]}")/run_256_R_multi.sh" "$@"
