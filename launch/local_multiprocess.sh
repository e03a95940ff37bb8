#!/usr/bin/env bash
# N JAX processes on this machine, talking over loopback (gloo collectives on CPU).
# Exercises the multi-host code path without a cluster:
#   NUM_PROCESSES=2 DEVICES_PER_PROCESS=2 launch/local_multiprocess.sh \
#       --config=configs/demo.py --workdir=/tmp/retformer_mp
# Any config runs this way, RetLLM too (each process scores its own chunks of queries):
#   launch/local_multiprocess.sh --config=configs/retllm_demo.py --workdir=/tmp/retllm_mp
# Each process logs to WORKDIR/logs/process_<i>.log; the script fails if any process fails.
set -euo pipefail
NUM_PROCESSES="${NUM_PROCESSES:-2}"
DEVICES_PER_PROCESS="${DEVICES_PER_PROCESS:-2}"
PORT="${PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}"
workdir=""
for arg in "$@"; do
  case "$arg" in --workdir=*) workdir="${arg#--workdir=}" ;; esac
done
[ -n "$workdir" ] || { echo "pass --workdir=DIR" >&2; exit 2; }
mkdir -p "$workdir/logs"
pids=()
for ((i = 0; i < NUM_PROCESSES; i++)); do
  JAX_PLATFORMS=cpu \
  XLA_FLAGS="--xla_force_host_platform_device_count=${DEVICES_PER_PROCESS}" \
  JAX_COORDINATOR_ADDRESS="127.0.0.1:${PORT}" JAX_NUM_PROCESSES="$NUM_PROCESSES" \
  JAX_PROCESS_ID="$i" RETFORMER_CPU_COLLECTIVES=gloo \
    python -m retformer_jax.main "$@" >"$workdir/logs/process_$i.log" 2>&1 &
  pids+=($!)
done
status=0
for i in "${!pids[@]}"; do
  if ! wait "${pids[$i]}"; then
    echo "process $i failed; see $workdir/logs/process_$i.log" >&2
    status=1
  fi
done
exit "$status"
