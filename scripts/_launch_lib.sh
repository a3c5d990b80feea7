# Shared by every launcher under scripts/ (sourced, never run): the argument vocabulary, how many
# nodes and processes a launch gets, the torchrun / srun line, the world-size line and the dry-run
# switch. The training launchers (scripts/train_tokenizer/, scripts/train_autoregressive/) are all
# `train_launch`; the evaluation launchers (evaluation_mergevq.sh, reconstruct.sh) are `eval_launch`.
#
# Environment read here (documented once, in README "Launching on clusters"):
#   NNODES                number of nodes; required by the multi-node launchers outside SLURM
#   DEVICES_PER_NODE      processes per node (default: SLURM_NTASKS_PER_NODE under SLURM, else the
#                         visible devices: CUDA_VISIBLE_DEVICES / ASCEND_RT_VISIBLE_DEVICES, else
#                         `nvidia-smi -L`, else `npu-smi info -l`, else 1)
#   MERGEVQ_ACCELERATOR   npu: count Ascend NPUs only, and training layers configs/trainer/npu8_bf16.yaml
#   MERGEVQ_EXTRA_CONFIG  extra YAML file(s), whitespace-separated, merged after the training config
#   MERGEVQ_PYTHON        interpreter that runs torchrun and the workers (default: python)
#   MERGEVQ_SLURM=0       ignore SLURM_JOB_ID (torchrun on each node of an allocation instead of srun)
#   MERGEVQ_DRY_RUN=1     print the launch line (and the world-size line) on stdout, run nothing

LAUNCH_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# Options that take a value, in every mergevq command a launcher starts (the one list; README
# "One flag vocabulary"). --classes and --cfg-scale may also take several space-separated values.
VALUE_OPTIONS=(--config --out --run-dir --resume --folder --num-keep --group-scale --batch-size --num-workers
               --devices --accelerator --precision --seed --tokenizer --ar --per-class --classes --cfg-scale
               --temperature --top-k --top-p)

takes_value() {
  local option
  for option in "${VALUE_OPTIONS[@]}"; do [[ $1 == "$option" ]] && return 0; done
  return 1
}

is_count() { [[ $1 =~ ^[1-9][0-9]*$ ]]; }
is_index() { [[ $1 =~ ^(0|[1-9][0-9]*)$ ]]; }
is_k_list() { [[ $1 =~ ^[1-9][0-9]*(,[1-9][0-9]*)*$ ]]; }

# die MESSAGE: one line on stderr, exit 2. `script` is the launcher's name, set by the caller.
die() {
  echo "${script:-launcher}: error: $1" >&2
  exit 2
}

# die_usage MESSAGE: the one error line, then the caller's `usage`, exit 2 (wrong arguments).
die_usage() {
  echo "${script:-launcher}: error: $1" >&2
  usage >&2
  exit 2
}

# option_value NAME ARGS...: the value of the last `NAME VALUE` / `NAME=VALUE` in ARGS (status 1 if none).
option_value() {
  local name=$1 found="" hit=1
  shift
  while (($# > 0)); do
    case $1 in
      "$name") (($# >= 2)) && { found=$2; hit=0; shift; } ;;
      "$name"=*) found=${1#*=}; hit=0 ;;
    esac
    shift
  done
  printf '%s' "$found"
  return $hit
}

# npu_requested ARGS...: true when MERGEVQ_ACCELERATOR=npu, MERGEVQ_EXTRA_CONFIG names an npu*.yaml,
# or ARGS say --accelerator npu / trainer.accelerator=npu / eval.accelerator=npu.
npu_requested() {
  [[ ${MERGEVQ_ACCELERATOR:-} == npu ]] && return 0
  local file
  for file in ${MERGEVQ_EXTRA_CONFIG:-}; do [[ $(basename "$file") == npu* ]] && return 0; done
  [[ $(option_value --accelerator "$@") == npu ]] && return 0
  local arg
  for arg in "$@"; do [[ $arg == *.accelerator=npu ]] && return 0; done
  return 1
}

# count_local_devices [npu]: visible devices of this node. Default: CUDA_VISIBLE_DEVICES /
# ASCEND_RT_VISIBLE_DEVICES, else nvidia-smi, else npu-smi, else 1 (CPU); `npu`: the Ascend sources only.
count_local_devices() {
  local kind=${1:-any} var list n
  local -a ids vars=(CUDA_VISIBLE_DEVICES ASCEND_RT_VISIBLE_DEVICES)
  [[ $kind == npu ]] && vars=(ASCEND_RT_VISIBLE_DEVICES)
  for var in "${vars[@]}"; do
    list=${!var:-}
    if [[ -n $list ]]; then
      IFS=, read -r -a ids <<<"$list"
      echo "${#ids[@]}"
      return
    fi
  done
  if [[ $kind != npu ]] && command -v nvidia-smi >/dev/null 2>&1; then
    n=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
    if is_count "$n"; then echo "$n"; return; fi
  fi
  if command -v npu-smi >/dev/null 2>&1; then
    n=$(npu-smi info -l 2>/dev/null | awk -F: '/Total Count/ {gsub(/[[:space:]]/, "", $2); print $2; exit}')
    if is_count "${n:-}"; then echo "$n"; return; fi
  fi
  echo 1
}

# resolve_devices ARGS...: sets `devices`, the processes per node: --devices N among ARGS, else
# DEVICES_PER_NODE, else SLURM_NTASKS_PER_NODE (under SLURM), else the visible devices. Both --devices N
# and a different DEVICES_PER_NODE is an error (one launch, one count).
resolve_devices() {
  local flag
  flag=$(option_value --devices "$@") || flag=""
  devices=${DEVICES_PER_NODE:-}
  if [[ -n $devices ]] && ! is_count "$devices"; then
    die "DEVICES_PER_NODE '$devices' is not a positive integer (processes per node)"
  fi
  if is_count "$flag"; then
    [[ -z $devices || $devices == "$flag" ]] || die "DEVICES_PER_NODE=$devices but --devices $flag: give one of them"
    devices=$flag
  fi
  if [[ -z $devices && ${slurm:-0} == 1 ]] && is_count "${SLURM_NTASKS_PER_NODE:-}"; then
    devices=$SLURM_NTASKS_PER_NODE
  fi
  if [[ -z $devices ]]; then
    if npu_requested "$@"; then devices=$(count_local_devices npu); else devices=$(count_local_devices); fi
  fi
}

world_size_line() {  # world_size_line NNODES DEVICES_PER_NODE
  echo "world size $(($1 * $2)) = $1 x $2 ($1 node(s), $2 device(s) per node)"
}

# set_rendezvous: sets `nnodes` and the array `rendezvous` for the launchers that are not training
# launchers (extract_codes.sh, sample_gpu.sh): standalone on one node; NNODES > 1 needs NODE_RANK,
# MASTER_ADDR and MASTER_PORT.
set_rendezvous() {
  nnodes=${NNODES:-1}
  is_count "$nnodes" || die "NNODES '$nnodes' is not a positive integer (the number of nodes)"
  if ((nnodes > 1)); then
    [[ -n ${NODE_RANK:-} ]] || die "NNODES=$nnodes needs NODE_RANK (0..$((nnodes - 1)), this node's rank)"
    is_index "$NODE_RANK" && ((NODE_RANK < nnodes)) || die "NODE_RANK '$NODE_RANK' is out of range for NNODES=$nnodes (0..$((nnodes - 1)))"
    [[ -n ${MASTER_ADDR:-} ]] || die "NNODES=$nnodes needs MASTER_ADDR (the address of node 0)"
    [[ -n ${MASTER_PORT:-} ]] || die "NNODES=$nnodes needs MASTER_PORT (a free port on node 0)"
    rendezvous=("--nnodes=$nnodes" "--node_rank=$NODE_RANK" "--master_addr=$MASTER_ADDR" "--master_port=$MASTER_PORT")
  else
    rendezvous=(--standalone --nnodes=1)
  fi
}

# set_default_resume ARGS...: sets the array `resume`: `--resume auto` (a requeued or restarted job
# continues its run; a first launch starts fresh) unless ARGS already say --resume or --overwrite.
set_default_resume() {
  resume=(--resume auto)
  local arg
  for arg in "$@"; do
    case $arg in
      --resume | --resume=* | --overwrite) resume=(); return ;;
    esac
  done
}

# run_or_print NAME WORLD CMD...: WORLD is the world-size line, or "" for none. With MERGEVQ_DRY_RUN=1
# print CMD (shell-quoted) on stdout, then WORLD on stdout, and exit; otherwise log both on stderr and
# let the shell become CMD.
run_or_print() {
  local name=$1 world=$2 line
  shift 2
  line=$(printf '%q ' "$@")
  line=${line% }
  if [[ -n ${MERGEVQ_DRY_RUN:-} && ${MERGEVQ_DRY_RUN} != 0 ]]; then
    echo "$line"
    [[ -z $world ]] || echo "$world"
    exit 0
  fi
  [[ -z $world ]] || echo "$name: $world" >&2
  echo "$name: $line" >&2
  exec "$@"
}

# resolve_config NAME: an existing file as given, else configs/NAME.yaml or configs/NAME of this
# checkout (the files a user edits); prints the path, status 1 if none exists.
resolve_config() {
  if [[ -f $1 ]]; then
    echo "$1"
  elif [[ -f $LAUNCH_ROOT/configs/$1.yaml ]]; then
    echo "$LAUNCH_ROOT/configs/$1.yaml"
  elif [[ -f $LAUNCH_ROOT/configs/$1 ]]; then
    echo "$LAUNCH_ROOT/configs/$1"
  else
    return 1
  fi
}

# --------------------------------------------------------------------------------------------------
# Training: train_launch SCRIPT single|multi CONFIG fixed|choosable [ARGS...]
#
#   single:  SCRIPT [CONFIG] [KEY=VALUE ...] [--option ...]          one node
#   multi:   SCRIPT MASTER_ADDR MASTER_PORT NODE_RANK [CONFIG] [KEY=VALUE ...] [--option ...]
#            once per node, NODE_RANK 0..NNODES-1; NNODES is required (the same on every node)
#   SLURM (SLURM_JOB_ID set, MERGEVQ_SLURM not 0): run ONCE from the batch script; `srun` starts every
#            task and Lightning reads the ranks from SLURM. The positional arguments are optional
#            (MASTER_ADDR / MASTER_PORT exported if given, NODE_RANK unused); nodes = SLURM_JOB_NUM_NODES
#            (multi) or 1 (single); an NNODES that disagrees is an error.
#
# CONFIG: `fixed` launchers always train the CONFIG they are given (a tokenizer variant; a --config
# among ARGS is forwarded to `mergevq train` and merged after it); `choosable` ones (MergeAR) take
# CONFIG as the default and let the first argument after the positionals, or --config NAME, name
# another (a file, or a name under configs/).
#
# The line: `mergevq train CONFIG [extra configs] trainer.num_nodes=N trainer.devices=D ARGS
# [--resume auto]`: the user's arguments come after the launcher's overrides, so they win.

train_usage() {
  local mode=$1 choose=$2 positional="" config=""
  [[ $mode == multi ]] && positional=" MASTER_ADDR MASTER_PORT NODE_RANK"
  [[ $choose == choosable ]] && config=" [CONFIG]"
  echo "usage: $script$positional$config [KEY=VALUE ...] [--out DIR] [--resume auto|PATH] [--option ...]"
  if [[ $mode == multi ]]; then
    echo "  run once per node with NODE_RANK 0..NNODES-1 and NNODES=<number of nodes> set on every node;"
    echo "  under SLURM run once from the batch script (nodes from SLURM_JOB_NUM_NODES)"
  fi
  echo "  environment: NNODES, DEVICES_PER_NODE, MERGEVQ_ACCELERATOR=npu, MERGEVQ_EXTRA_CONFIG, MERGEVQ_PYTHON,"
  echo "  MERGEVQ_SLURM=0, MERGEVQ_DRY_RUN=1 (details: scripts/_launch_lib.sh, README \"Launching on clusters\")"
}

train_launch() {
  script=$1
  local mode=$2 config=$3 choose=$4
  shift 4
  usage() { train_usage "$mode" "$choose"; }
  if [[ ${1:-} == -h || ${1:-} == --help ]]; then
    usage
    exit 0
  fi
  slurm=0
  [[ -n ${SLURM_JOB_ID:-} && ${MERGEVQ_SLURM:-1} != 0 ]] && slurm=1

  # --- the authors' positional form ---------------------------------------------------------------
  local addr="" port="" rank=""
  if [[ $mode == multi ]] && ! { ((slurm)) && { (($# == 0)) || [[ $1 == *=* || $1 == -* ]]; }; }; then
    (($# >= 3)) || die_usage "expected MASTER_ADDR MASTER_PORT NODE_RANK, got $# argument(s)"
    addr=$1 port=$2 rank=$3
    shift 3
    [[ -n $addr && $addr != *=* && $addr != -* ]] || die_usage "MASTER_ADDR '$addr' is not a host name or address"
    [[ $port =~ ^[0-9]+$ ]] && ((10#$port >= 1 && 10#$port <= 65535)) || die_usage "MASTER_PORT '$port' is not a port number (1-65535)"
    is_index "$rank" || die_usage "NODE_RANK '$rank' is not a non-negative integer"
  fi

  # --- nodes --------------------------------------------------------------------------------------
  local slurm_nodes
  if ((slurm)); then
    slurm_nodes=${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-}}
    is_count "$slurm_nodes" || die "SLURM_JOB_ID is set but SLURM_JOB_NUM_NODES '$slurm_nodes' is not a node count (set MERGEVQ_SLURM=0 to launch with torchrun)"
  fi
  if [[ -n ${NNODES:-} ]] && ! is_count "$NNODES"; then
    die "NNODES '$NNODES' is not a positive integer (the number of nodes)"
  fi
  if [[ $mode == single ]]; then
    nnodes=1
    [[ -z ${NNODES:-} || $NNODES == 1 ]] || die "NNODES=$NNODES but $script starts one node: use the _multi launcher (or unset NNODES)"
  elif ((slurm)); then
    nnodes=$slurm_nodes
    [[ -z ${NNODES:-} || $NNODES == "$slurm_nodes" ]] || die "NNODES=$NNODES but SLURM_JOB_NUM_NODES=$slurm_nodes: unset NNODES or make them agree"
  else
    [[ -n ${NNODES:-} ]] || die "NNODES is not set: set NNODES to the number of nodes (the same on every node), e.g. NNODES=2 $script $addr $port $rank"
    nnodes=$NNODES
    ((rank < nnodes)) || die "NODE_RANK $rank is out of range for NNODES=$nnodes (0..$((nnodes - 1)))"
  fi

  # --- the config ---------------------------------------------------------------------------------
  local -a args=("$@")
  if [[ $choose == choosable ]]; then
    local name=$config chosen="" flag="" i
    if ((${#args[@]} > 0)) && [[ ${args[0]} != *=* && ${args[0]} != -* ]]; then
      chosen=${args[0]}
      args=("${args[@]:1}")
    fi
    local -a rest=()
    for ((i = 0; i < ${#args[@]}; i++)); do
      case ${args[i]} in
        --config) ((i + 1 < ${#args[@]})) || die_usage "--config needs a value"; flag=${args[i + 1]}; ((i += 1)) ;;
        --config=*) flag=${args[i]#*=} ;;
        *) rest+=("${args[i]}") ;;
      esac
    done
    args=(${rest[@]+"${rest[@]}"})
    [[ -z $chosen || -z $flag || $chosen == "$flag" ]] || die_usage "two configs given ('$chosen' and --config '$flag'): give one"
    name=${flag:-${chosen:-$config}}
    config=$(resolve_config "$name") || die_usage "config not found: $name (a file, or a name under $LAUNCH_ROOT/configs/)"
  fi
  [[ -f $config ]] || die "config not found: $config"

  # --- processes per node, hardware ---------------------------------------------------------------
  resolve_devices ${args[@]+"${args[@]}"}
  local -a extra=()
  [[ -n ${MERGEVQ_EXTRA_CONFIG:-} ]] && read -r -a extra <<<"$MERGEVQ_EXTRA_CONFIG"
  if [[ ${MERGEVQ_ACCELERATOR:-} == npu ]]; then
    local file has_npu=0
    for file in ${extra[@]+"${extra[@]}"}; do [[ $(basename "$file") == npu* ]] && has_npu=1; done
    ((has_npu)) || extra=("$LAUNCH_ROOT/configs/trainer/npu8_bf16.yaml" ${extra[@]+"${extra[@]}"})
  elif [[ -n ${MERGEVQ_ACCELERATOR:-} ]]; then
    die "MERGEVQ_ACCELERATOR '$MERGEVQ_ACCELERATOR' is not supported by the training launchers (npu, or unset for the config's accelerator)"
  fi

  # --- the line -----------------------------------------------------------------------------------
  local python=${MERGEVQ_PYTHON:-python}
  set_default_resume ${args[@]+"${args[@]}"}
  local -a train=(mergevq train "$config" ${extra[@]+"${extra[@]}"} "trainer.num_nodes=$nnodes"
                  "trainer.devices=$devices" ${args[@]+"${args[@]}"} ${resume[@]+"${resume[@]}"})
  local -a cmd
  if ((slurm)); then
    [[ -n $addr ]] && export MASTER_ADDR=$addr MASTER_PORT=$port
    cmd=(srun "--nodes=$nnodes" "--ntasks-per-node=$devices" "$python" -m "${train[@]}")
  elif [[ $mode == multi ]]; then
    cmd=("$python" -m torch.distributed.run "--nnodes=$nnodes" "--nproc_per_node=$devices"
         "--node_rank=$rank" "--master_addr=$addr" "--master_port=$port" -m "${train[@]}")
  else
    cmd=("$python" -m torch.distributed.run --standalone --nnodes=1 "--nproc_per_node=$devices" -m "${train[@]}")
  fi
  run_or_print "$script" "$(world_size_line "$nnodes" "$devices")" "${cmd[@]}"
}

# --------------------------------------------------------------------------------------------------
# Evaluation: eval_launch SCRIPT evaluate-tokenizer|reconstruct [ARGS...]
#
# `mergevq evaluate-tokenizer` / `mergevq reconstruct` on every local device of one node (torchrun;
# the data set is sharded and the results equal one process's). ARGS may come in any order:
#   a K list (256,144 or 64), or --num-keep K_LIST        the kept-token counts to sweep
#   KEY=VALUE                                              overrides, kept in their order
#   a *.yaml / *.yml file                                  an extra config, kept in its order
#   the first other positional                             RUN_DIR (must exist)
#   reconstruct: the second other positional, or --out     OUT_DIR
#   --option [VALUE]                                       forwarded (VALUE_OPTIONS take a value)
# Anything not given comes from the editable defaults at the top of the calling script: RUN_DIR,
# K_LIST, OUT, DATA_ROOT, FOLDER, BATCH_SIZE, NUM_WORKERS, MAX_IMAGES ("" = the config's value).
# The line is canonical, so any order of the same arguments gives the same command:
#   ... -m mergevq COMMAND [--out OUT] [--num-keep K] [other options, by name] RUN_DIR
#       [the defaults' overrides] [configs and overrides as given]

eval_usage() {
  local out=""
  [[ $command == reconstruct ]] && out=" [OUT_DIR]"
  echo "usage: $script [RUN_DIR]$out [K_LIST] [KEY=VALUE | CONFIG.yaml | --option ...]   (any order)"
  echo "  defaults: the variables at the top of $script_path (edit these); environment: DEVICES_PER_NODE,"
  echo "  MERGEVQ_ACCELERATOR=npu, MERGEVQ_PYTHON, MERGEVQ_DRY_RUN=1 (details: scripts/_launch_lib.sh)"
}

eval_launch() {
  script=$1 command=$2
  shift 2
  script_path=${script_path:-scripts/evaluation/$script}
  usage() { eval_usage; }
  if [[ ${1:-} == -h || ${1:-} == --help ]]; then
    usage
    exit 0
  fi
  local run_dir="" out="" k="" data_source=0
  local -a options=() names=() items=()
  while (($# > 0)); do
    case $1 in
      --num-keep | --out)
        (($# >= 2)) || die_usage "$1 needs a value"
        if [[ $1 == --out ]]; then out=$2; else [[ -z $k || $k == "$2" ]] || die_usage "two K lists given ('$k' and '$2'): give one"; k=$2; fi
        shift 2 ;;
      --num-keep=*) [[ -z $k || $k == "${1#*=}" ]] || die_usage "two K lists given ('$k' and '${1#*=}'): give one"; k=${1#*=}; shift ;;
      --out=*) out=${1#*=}; shift ;;
      -*)
        local name=${1%%=*}
        [[ $name == --folder || $name == --demo ]] && data_source=1
        if [[ $1 != *=* ]] && takes_value "$1"; then
          (($# >= 2)) || die_usage "$1 needs a value"
          options+=("$1" "$2"); names+=("$name" "")
          shift 2
        else
          options+=("$1"); names+=("$name")
          shift
        fi ;;
      *)
        if is_k_list "$1"; then
          [[ -z $k || $k == "$1" ]] || die_usage "two K lists given ('$k' and '$1'): give one"
          k=$1
        elif [[ $1 == *=* ]]; then
          [[ $1 == data=* ]] && data_source=1
          items+=("$1")
        elif [[ $1 == *.yaml || $1 == *.yml ]]; then
          items+=("$1")
        elif [[ -z $run_dir ]]; then
          run_dir=$1
        elif [[ $command == reconstruct && -z $out ]]; then
          out=$1
        else
          items+=("$1")
        fi
        shift ;;
    esac
  done

  # --- the defaults at the top of the calling script ----------------------------------------------
  if [[ -z $run_dir ]]; then
    [[ -n ${RUN_DIR:-} ]] || die_usage "expected RUN_DIR: give a run directory, export folder or checkpoint, or set RUN_DIR at the top of $script_path"
    [[ -e $RUN_DIR ]] || die_usage "expected RUN_DIR: the default RUN_DIR='$RUN_DIR' does not exist; edit RUN_DIR at the top of $script_path or give a run directory, export folder or checkpoint"
    run_dir=$RUN_DIR
  fi
  [[ $run_dir != -* ]] || die_usage "RUN_DIR '$run_dir' looks like an option"
  [[ -e $run_dir ]] || die_usage "RUN_DIR '$run_dir' does not exist"
  k=${k:-${K_LIST:-}}
  [[ -z $k ]] || is_k_list "$k" || die_usage "K list '$k' is not a comma-separated list of positive integers (e.g. 256,144,64)"
  out=${out:-${OUT:-}}
  [[ $command != reconstruct || -n $out ]] || die_usage "expected OUT_DIR: give an output folder or set OUT at the top of $script_path"
  local -a defaults=()
  if ((!data_source)) && [[ -n ${FOLDER:-} ]]; then
    options+=(--folder "$FOLDER"); names+=(--folder ""); data_source=1
  fi
  ((!data_source)) && [[ -n ${DATA_ROOT:-} ]] && defaults+=("data.params.validation.params.root=$DATA_ROOT")
  [[ -n ${BATCH_SIZE:-} ]] && defaults+=("eval.batch_size=$BATCH_SIZE")
  [[ -n ${NUM_WORKERS:-} ]] && defaults+=("eval.num_workers=$NUM_WORKERS")
  [[ -n ${MAX_IMAGES:-} ]] && defaults+=("eval.max_images=$MAX_IMAGES")

  # --- canonical order: the options sorted by name (stable), each with its value -------------------
  local -a sorted=() order=()
  local i
  if ((${#options[@]} > 0)); then
    mapfile -t order < <(for i in "${!names[@]}"; do [[ -n ${names[i]} ]] && printf '%s\t%d\n' "${names[i]}" "$i"; done |
                         LC_ALL=C sort -s -t $'\t' -k1,1 | cut -f2)
    for i in "${order[@]}"; do
      sorted+=("${options[i]}")
      [[ -z ${names[i + 1]+x} || -n ${names[i + 1]} ]] || sorted+=("${options[i + 1]}")
    done
  fi
  local -a head=()
  [[ -n $out ]] && head+=(--out "$out")
  [[ -n $k ]] && head+=(--num-keep "$k")

  slurm=0
  resolve_devices ${options[@]+"${options[@]}"}
  local python=${MERGEVQ_PYTHON:-python}
  echo "$script: $(world_size_line 1 "$devices")" >&2
  local -a cmd=("$python" -m torch.distributed.run --standalone --nnodes=1 "--nproc_per_node=$devices"
                -m mergevq "$command" ${head[@]+"${head[@]}"} ${sorted[@]+"${sorted[@]}"} "$run_dir"
                ${defaults[@]+"${defaults[@]}"} ${items[@]+"${items[@]}"})
  run_or_print "$script" "" "${cmd[@]}"
}
