#!/usr/bin/env bash
# The per-node part of scripts/slurm/train.sbatch: srun runs this once on every node (one task per node).
# It turns SLURM's environment into one `accelerate launch` per node with the project's multi_node.yaml:
#   machine rank   <- SLURM_NODEID
#   machines       <- SLURM_NNODES
#   main address   <- the first host of SLURM_JOB_NODELIST (scontrol show hostnames; parsed here when
#                     scontrol is absent, e.g. inside a container)
#   main port      <- SFT_HUB_MAIN_PORT, else 20000 + SLURM_JOB_ID % 20000 (same on every node)
#   processes/node <- SFT_HUB_PROCS_PER_NODE, else SLURM_GPUS_ON_NODE, else `nvidia-smi -L`, else 1
# Other knobs: ACCELERATE_CONFIG (default accelerate_configs/multi_node.yaml; use a copy of it with an
# fsdp_config/deepspeed_config block for FSDP/DeepSpeed across nodes), SFT_HUB_ACCELERATE_ARGS (extra
# `accelerate launch` flags, e.g. "--mixed_precision fp16"), PYTHON, SFT_HUB_MODULE (module each rank runs).
#
#   usage: scripts/slurm/node.sh RECIPE.yaml [overrides...]
set -euo pipefail

first_host() {  # first host name of a SLURM node list such as "gpu[03-04,07],cpu1" -> gpu03
  local list=$1
  if command -v scontrol >/dev/null 2>&1; then
    scontrol show hostnames "$list" | head -n 1
    return
  fi
  local first=${list%%,*}                           # "gpu[03-04" or "cpu1"
  if [[ $list == *"["* && ${list%%[*} != *","* ]]; then
    local prefix=${list%%[*} range=${list#*[}
    range=${range%%]*}; range=${range%%,*}; range=${range%%-*}
    first="$prefix$range"                           # zero padding kept: gpu[03-04] -> gpu03
  fi
  echo "$first"
}

procs_per_node() {
  if [[ -n ${SFT_HUB_PROCS_PER_NODE:-} ]]; then echo "$SFT_HUB_PROCS_PER_NODE"; return; fi
  if [[ -n ${SLURM_GPUS_ON_NODE:-} ]]; then echo "$SLURM_GPUS_ON_NODE"; return; fi
  local n=0
  if command -v nvidia-smi >/dev/null 2>&1; then n=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true); fi
  if (( n > 0 )); then echo "$n"; else echo 1; fi
}

if [[ ${1:-} == --first-host ]]; then first_host "$2"; exit 0; fi
[[ $# -ge 1 ]] || { echo "usage: $0 RECIPE.yaml [overrides...]" >&2; exit 2; }
: "${SLURM_NODEID:?run under srun (or set SLURM_NODEID, SLURM_NNODES, SLURM_JOB_NODELIST, SLURM_JOB_ID)}"
: "${SLURM_NNODES:?}" "${SLURM_JOB_NODELIST:?}"

cd "$(dirname "$0")/../.."
main_addr=$(first_host "$SLURM_JOB_NODELIST")
main_port=${SFT_HUB_MAIN_PORT:-$(( 20000 + ${SLURM_JOB_ID:-0} % 20000 ))}
per_node=$(procs_per_node)
echo "node $SLURM_NODEID/$SLURM_NNODES: main $main_addr:$main_port, $per_node process(es) here" >&2

# shellcheck disable=SC2086  # SFT_HUB_ACCELERATE_ARGS is a list of flags
exec "${PYTHON:-python}" -m accelerate.commands.launch \
  --config_file "${ACCELERATE_CONFIG:-accelerate_configs/multi_node.yaml}" \
  --num_machines "$SLURM_NNODES" --machine_rank "$SLURM_NODEID" \
  --main_process_ip "$main_addr" --main_process_port "$main_port" \
  --num_processes $(( SLURM_NNODES * per_node )) \
  ${SFT_HUB_ACCELERATE_ARGS:-} \
  -m "${SFT_HUB_MODULE:-sft_hub}" train "$@"
