#!/usr/bin/env bash
# The GPU measurements, as one prepared run (see docs/benchmarks.md).
# Usage on the GPU machine, from the repo root:  OUT=/some/dir bash docs/benchmarks/gpu.sh [engine|distill|serve|all]
# Each part prints a table and writes JSON under $OUT. The SDXL UNet takes ~100-140 s to compile per shape on an
# H200, so "engine" alone needs most of a 10-minute slot; run the parts in separate calls if time is short.
#
# "serve" is the studio as deployed, sized to fit one 10-minute call (predicted: ~1 min to write the random model,
# ~1 min per model load, ~2-4 min of compilation at the cold start, ~1.5 min of typing): the memory plan against
# torch.cuda.max_memory_allocated, the cold start (empty compile caches) and the warm start (caches kept), the
# variant swap times, and keystroke->frame for 1 and 2 steps with one typing client and with 8. The GPU machine has
# no hub access, so its model is SDXL-shaped with random weights: a folder whose 1/2/4/8-step variants each name a
# full UNet file, as Lightning's do (one file under four names: a swap copies every byte whatever the values).
# Settings come from the environment; a CPU dry run of every command:
#   OUT=/tmp/serve BASE=tiny DEVICE=cpu SIZE=256 BACKEND=eager SECONDS_TYPING=3 bash docs/benchmarks/gpu.sh serve
set -euo pipefail
OUT=${OUT:-docs/benchmarks}
part=${1:-engine}
mkdir -p "$OUT"
DEVICE=${DEVICE:-cuda}
if [[ $DEVICE == cuda ]]; then
  gpu=$(python -c "import torch; print(torch.cuda.get_device_name().replace(' ', '-'))")
else
  gpu=cpu
fi
if [[ $part == engine || $part == all ]]; then
  # Stock diffusers recipe vs the engine, same random SDXL weights, same run.
  python -m pipelines bench --model random-sdxl --device cuda --size 1024 --steps 1 2 --batch 1 4 \
      --backend eager compile --vae full tiny --repeats 10 --warmup 3 --json "$OUT/random-sdxl-1024-$gpu.json"
fi
if [[ $part == distill || $part == all ]]; then
  # One optimizer step of each phase type at 1024^2, random SDXL weights, bf16, gradient checkpointing.
  python -m distill.bench_gpu --json "$OUT/distill-phases-$gpu.json"
fi
if [[ $part == serve || $part == all ]]; then
  BASE=${BASE:-random-sdxl}          # random-sdxl on the GPU; tiny for a CPU dry run
  SIZE=${SIZE:-1024}
  BACKEND=${BACKEND:-compile}
  MAX_BATCH=${MAX_BATCH:-1}          # compile warms batch sizes 1..MAX_BATCH per size: ~100 s each for SDXL
  SECONDS_TYPING=${SECONDS_TYPING:-10}
  PORT=${PORT:-7871}
  WEIGHTS=${WEIGHTS:-}               # empty: the studio's memory plan places the variants; resident | swap forces it
  scratch=$(mktemp -d)
  serve="$OUT/serve-$BASE-$gpu"
  mkdir -p "$serve"
  model="$scratch/model"
  BASE=$BASE MODEL_DIR=$model python - <<'PY'
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from pipelines import architectures, variants

base, folder = os.environ["BASE"], Path(os.environ["MODEL_DIR"])
folder.mkdir(parents=True)
unet = architectures.sdxl_unet() if base == "random-sdxl" else architectures.tiny_components()["unet"]
save_file({k: v.to(torch.float16).contiguous() for k, v in unet.state_dict().items()}, str(folder / "unet.safetensors"))
chosen = []
for steps in (1, 2, 4, 8):
    (folder / f"unet_{steps}step.safetensors").symlink_to("unet.safetensors")
    chosen.append(variants.Variant(steps, "sample" if steps == 1 else "epsilon", unet_file=f"unet_{steps}step.safetensors"))
variants.write_manifest(folder, base, chosen, live_steps=1)
print(f"wrote {folder}: {base} with four full-UNet variants")
PY
  # The plan for the whole card, as `python -m pipelines plan` prints it (the studio plans from the free memory).
  vram=$(python -c "import torch; print(torch.cuda.mem_get_info()[1] / 2**30 if torch.cuda.is_available() else 16)")
  python -m pipelines plan --model "$model" --vram "$vram" --max-batch "$MAX_BATCH" --sizes "$SIZE" --json "$serve/plan.json" || true
  export STUDIO_CACHE="$scratch/studio-cache" TORCHINDUCTOR_CACHE_DIR="$scratch/inductor-cache"  # empty: the first start is cold
  url="http://127.0.0.1:$PORT"
  for start in cold warm; do
    python -m realtime --model "$model" --device "$DEVICE" --backend "$BACKEND" --max-batch "$MAX_BATCH" --sizes "${SIZE}x${SIZE}" --port "$PORT" ${WEIGHTS:+--weights "$WEIGHTS"} \
        > "$serve/studio-$start.log" 2>&1 &
    studio=$!
    # Seconds from launch to the first 200 from /healthz (model load, plan, warm-up), and /healthz's own warmup_seconds.
    python - "$url" "$studio" "$start" "$serve" <<'PY' || { tail -30 "$serve/studio-$start.log"; kill "$studio" || true; exit 1; }
import json, os, sys, time, urllib.error, urllib.request

url, pid, start, serve = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
began = time.monotonic()
while True:
    os.kill(pid, 0)  # raises once the studio has exited
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=5) as response:
            health = json.load(response)
            break
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        time.sleep(1)
result = {"start": start, "ready_seconds": round(time.monotonic() - began, 1), "warmup_seconds": health["warmup_seconds"]}
open(f"{serve}/start-{start}.json", "w").write(json.dumps(result))
print(result)
PY
    if [[ $start == cold ]]; then
      for steps in 2 1; do  # the first 2-step keystroke swaps the 2-step weights in; the 1-step run swaps the live ones back
        for clients in 1 8; do
          python -m realtime.loadtest --url "ws://127.0.0.1:$PORT/ws" --clients "$clients" --seconds "$SECONDS_TYPING" --rate 5 \
              --steps "$steps" --size "$SIZE" --drain 60 --json "$serve/keystroke-${steps}step-${clients}clients.json"
        done
      done
      # plan vs cuda_peak_allocated, swap counts and times
      python -c "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1]).read().decode())" "$url/metrics" > "$serve/metrics.json"
    fi
    kill "$studio"
    wait "$studio" || true
  done
  python - "$serve" <<'PY'
import json, sys
from pathlib import Path

serve = Path(sys.argv[1])
read = lambda name: json.loads((serve / name).read_text())
memory = read("metrics.json")["engine_memory"]
summary = {
    "plan_card": {k: read("plan.json")[k] for k in ("fits", "vram_bytes", "predicted_peak_bytes", "variants")},
    "plan_studio": memory.get("plan"),
    "cuda_peak_allocated": memory.get("cuda_peak_allocated"),
    "weights": memory.get("weights"),
    "swap_ms": read("metrics.json")["latency_ms"].get("swap"),
    "starts": {s: read(f"start-{s}.json") for s in ("cold", "warm")},
    "keystroke_to_frame_ms": {
        f"{steps}step_{clients}clients": read(f"keystroke-{steps}step-{clients}clients.json")["key_to_frame_ms"] for steps in (2, 1) for clients in (1, 8)
    },
}
(serve / "summary.json").write_text(json.dumps(summary, indent=2))
print(json.dumps(summary, indent=2))
PY
  rm -rf "$scratch"
fi
