# Shared by the launchers under scripts/ (sourced, never run): how many processes a node gets, the
# torchrun rendezvous arguments, and the dry-run switch.

is_count() { [[ $1 =~ ^[1-9][0-9]*$ ]]; }

# Visible devices of this node: CUDA_VISIBLE_DEVICES / ASCEND_RT_VISIBLE_DEVICES, else nvidia-smi,
# else npu-smi, else 1 (CPU).
count_local_devices() {
  local var list n
  local -a ids
  for var in CUDA_VISIBLE_DEVICES ASCEND_RT_VISIBLE_DEVICES; do
    list=${!var:-}
    if [[ -n $list ]]; then
      IFS=, read -r -a ids <<<"$list"
      echo "${#ids[@]}"
      return
    fi
  done
  if command -v nvidia-smi >/dev/null 2>&1; then
    n=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
    if is_count "$n"; then echo "$n"; return; fi
  fi
  if command -v npu-smi >/dev/null 2>&1; then
    n=$(npu-smi info -l 2>/dev/null | awk -F: '/Total Count/ {gsub(/[[:space:]]/, "", $2); print $2; exit}')
    if is_count "${n:-}"; then echo "$n"; return; fi
  fi
  echo 1
}

# Sets the array `rendezvous`: standalone on one node; NNODES > 1 needs NODE_RANK, MASTER_ADDR, MASTER_PORT.
set_rendezvous() {
  local nnodes=${NNODES:-1}
  if ((nnodes > 1)); then
    rendezvous=("--nnodes=$nnodes" "--node_rank=${NODE_RANK:?set NODE_RANK (0..NNODES-1)}"
                "--master_addr=${MASTER_ADDR:?set MASTER_ADDR}" "--master_port=${MASTER_PORT:?set MASTER_PORT}")
  else
    rendezvous=(--standalone --nnodes=1)
  fi
}

# Sets the array `resume`: `--resume auto` (a requeued or restarted job continues its run; a first
# launch starts fresh) unless the arguments already say --resume or --overwrite.
set_default_resume() {
  resume=(--resume auto)
  local arg
  for arg in "$@"; do
    case $arg in
      --resume | --resume=* | --overwrite) resume=(); return ;;
    esac
  done
}

# run_or_print NAME CMD...: with MERGEVQ_DRY_RUN=1 print CMD (shell-quoted) on stdout and exit;
# otherwise log it on stderr as "NAME: CMD" and let the shell become it.
run_or_print() {
  local name=$1 line
  shift
  line=$(printf '%q ' "$@")
  line=${line% }
  if [[ -n ${MERGEVQ_DRY_RUN:-} && ${MERGEVQ_DRY_RUN} != 0 ]]; then
    echo "$line"
    exit 0
  fi
  echo "$name: $line" >&2
  exec "$@"
}
