#!/usr/bin/env bash
# Two-worker MultiWorkerMirroredStrategy run on this machine (127.0.0.1), one
# process per worker, each with its own TF_CONFIG (same cluster, its own task index).
# On real machines: run the same command on each host with that host's index and
# the cluster's real host:port list (every worker must reach every other one).
#
#   training/multiworker/launch_local.sh synthetic:/data/synth RUN [extra tfattr.train args]
set -euo pipefail
DATA=${1:?usage: launch_local.sh KIND:DIR WORKDIR [args...]}
WORKDIR=${2:?usage: launch_local.sh KIND:DIR WORKDIR [args...]}
shift 2
PY=${PYTHON:-python}
free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PORT0=$(free_port); PORT1=$(free_port)
CLUSTER="\"worker\": [\"127.0.0.1:${PORT0}\", \"127.0.0.1:${PORT1}\"]"
pids=()
for INDEX in 0 1; do
  TF_CONFIG="{\"cluster\": {${CLUSTER}}, \"task\": {\"type\": \"worker\", \"index\": ${INDEX}}}" \
    "$PY" -m tfattr.train --data "$DATA" --workdir "$WORKDIR" "$@" > "worker${INDEX}.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
echo "worker logs: worker0.log worker1.log; results: $WORKDIR (chief), $WORKDIR/workers/1 (worker 1)"
exit $status
