#!/usr/bin/env bash
# Ray on Slurm, run by srun as one task per node inside the container.
# Node 0 starts the Ray head, waits until every node's GPUs have joined, runs the training
# command (its arguments) against that cluster with RAY_ADDRESS, then shuts Ray down.
# The other nodes start Ray workers and keep them up until node 0 says it is done.
#
# Environment (set by `gdpo launch` in the sbatch script):
#   GDPO_RAY_HEAD_IP     address of the first node of the allocation
#   GDPO_RAY_PORT        Ray GCS port
#   GDPO_EXPECTED_GPUS   nodes x GPUs per node
#   GDPO_RAY_WAIT_S      how long to wait for all GPUs to join
#   GDPO_RUN_DIR         run directory on the shared filesystem (kept across requeues)
#   GDPO_WORKDIR         project directory inside the container
set -euo pipefail

node_id=${SLURM_NODEID:-0}
attempt=${SLURM_RESTART_COUNT:-0}
# One flag per job attempt, so that a requeued job does not see the last attempt's flag.
done_flag="$GDPO_RUN_DIR/.ray-done-${SLURM_JOB_ID:-local}-$attempt"
# Ray's Unix sockets live under its temp dir: keep that path short and node-local.
ray_tmp="/tmp/ray-${SLURM_JOB_ID:-local}"
address="$GDPO_RAY_HEAD_IP:$GDPO_RAY_PORT"
export RAY_USAGE_STATS_ENABLED=0

mkdir -p "$GDPO_RUN_DIR"
cd "$GDPO_WORKDIR"

if [ "$node_id" = "0" ]; then
    echo "[ray-bootstrap] head on $(hostname) ($address), attempt $attempt"
    ray start --head --node-ip-address="$GDPO_RAY_HEAD_IP" --port="$GDPO_RAY_PORT" \
        --temp-dir="$ray_tmp" --include-dashboard=false --disable-usage-stats
    trap 'touch "$done_flag"; ray stop --force >/dev/null 2>&1 || true' EXIT

    python - "$GDPO_EXPECTED_GPUS" "$GDPO_RAY_WAIT_S" <<'PY'
import sys
import time

import ray

want, limit = int(sys.argv[1]), float(sys.argv[2])
ray.init(address="auto", logging_level="ERROR")
deadline = time.monotonic() + limit
while (have := int(ray.cluster_resources().get("GPU", 0))) < want:
    if time.monotonic() > deadline:
        sys.exit(f"[ray-bootstrap] only {have} of {want} GPUs joined the Ray cluster within {limit:.0f} s")
    time.sleep(5)
print(f"[ray-bootstrap] all {have} GPUs joined", flush=True)
PY

    # Training runs in the background so that Slurm's SIGTERM (preemption, time limit)
    # reaches it: the trainer checkpoints and exits, and a requeue resumes from there.
    RAY_ADDRESS="$address" "$@" &
    train_pid=$!
    trap 'kill -TERM "$train_pid" 2>/dev/null || true' TERM INT
    status=0
    wait "$train_pid" || status=$?
    if kill -0 "$train_pid" 2>/dev/null; then
        # `wait` returned because of the trapped signal: wait for the checkpoint and exit.
        wait "$train_pid" || status=$?
    fi
    echo "[ray-bootstrap] training exited with status $status"
    exit "$status"
else
    deadline=$((SECONDS + GDPO_RAY_WAIT_S))
    until ray start --address="$address" --temp-dir="$ray_tmp" --disable-usage-stats; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "[ray-bootstrap] could not join the Ray head at $address" >&2
            exit 1
        fi
        sleep 5
    done
    echo "[ray-bootstrap] worker on $(hostname) joined $address"
    until [ -e "$done_flag" ]; do
        sleep 10
    done
    ray stop --force >/dev/null 2>&1 || true
fi
