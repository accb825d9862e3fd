#!/usr/bin/env bash
# One worker against two (--devices cpu,cpu, one torch thread each) in one run: the shapes model on the CPU, 20
# simulated people typing 5 keys/s for 20 s into each server in turn. Writes cpu-shapes-20clients-{1,2}worker.json
# and cpu-shapes-workers.json (the ratio, and the machine's load average before each server started), each name
# ending in -$TAG when TAG is set.
# Usage, from the repository root: TAG=run1 bash docs/benchmarks/cpu-workers.sh   (PORT=7881 by default)
set -euo pipefail
port=${PORT:-7881}
out=docs/benchmarks
tag=${TAG:+-$TAG}
declare -A devices=([1]=cpu [2]=cpu,cpu)
for workers in 1 2; do
  cut -d' ' -f1 /proc/loadavg > "/tmp/load-before-$workers"
  OMP_NUM_THREADS=1 python app.py --port "$port" --devices "${devices[$workers]}" > "/tmp/studio-$workers.log" 2>&1 &
  server=$!
  until curl -sf "http://127.0.0.1:$port/healthz" > /dev/null; do
    kill -0 "$server" || { cat "/tmp/studio-$workers.log"; exit 1; }
    sleep 1
  done
  python -m realtime.loadtest --url "ws://127.0.0.1:$port/ws" --clients 20 --seconds 20 --rate 5 --json "$out/cpu-shapes-20clients-${workers}worker$tag.json"
  kill "$server"
  wait "$server" || true
done
python - "$out" "$tag" <<'PY'
import json, sys
out, tag = sys.argv[1], sys.argv[2]
runs = {w: json.load(open(f"{out}/cpu-shapes-20clients-{w}worker{tag}.json")) for w in (1, 2)}
summary = {
    "model": "shapes (2-step student, 128x128)",
    "clients": 20,
    "fps": {w: r["fps"] for w, r in runs.items()},
    "ratio_2_over_1": round(runs[2]["fps"] / runs[1]["fps"], 2),
    "lost_final_updates": {w: r["lost_final_updates"] for w, r in runs.items()},
    "load_average_1min_before": {w: float(open(f"/tmp/load-before-{w}").read()) for w in (1, 2)},
    "load_average_1min_after": {w: r["load_average_1min"] for w, r in runs.items()},
}
json.dump(summary, open(f"{out}/cpu-shapes-workers{tag}.json", "w"), indent=2)
print(json.dumps(summary, indent=2))
PY
