#!/usr/bin/env bash
# The GPU measurements, as one prepared run (see docs/benchmarks.md).
# Usage on the GPU machine, from the repo root:  OUT=/some/dir bash docs/benchmarks/gpu.sh [engine|distill|all]
# Each part prints a table and writes JSON under $OUT. The SDXL UNet takes ~100-140 s to compile per shape on an
# H200, so "engine" alone needs most of a 10-minute slot; run the parts in separate calls if time is short.
set -euo pipefail
OUT=${OUT:-docs/benchmarks}
part=${1:-engine}
mkdir -p "$OUT"
gpu=$(python -c "import torch; print(torch.cuda.get_device_name().replace(' ', '-'))")
if [[ $part == engine || $part == all ]]; then
  # Stock diffusers recipe vs the engine, same random SDXL weights, same run.
  python -m pipelines bench --model random-sdxl --device cuda --size 1024 --steps 1 2 --batch 1 4 \
      --backend eager compile --vae full tiny --repeats 10 --warmup 3 --json "$OUT/random-sdxl-1024-$gpu.json"
fi
if [[ $part == distill || $part == all ]]; then
  # One optimizer step of each phase type at 1024^2, random SDXL weights, bf16, gradient checkpointing.
  python -m distill.bench_gpu --json "$OUT/distill-phases-$gpu.json"
fi
