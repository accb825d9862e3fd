"""The GPU benchmark script runs every phase type end to end (here: tiny model, CPU) and writes its JSON."""

import json

from distill import bench_gpu


def test_bench_runs_every_phase_type_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    bench_gpu.main(["--model", "tiny", "--resolution", "64", "--device", "cpu", "--precision", "no", "--lora-rank", "4", "--json", str(out)])
    report = json.loads(out.read_text())
    assert [p["phase"] for p in report["phases"]] == [name for name, _ in bench_gpu.PHASE_TYPES]
    for phase in report["phases"]:
        assert phase["status"] == "ok" and phase["seconds_per_step"] > 0 and phase["peak_memory_gib"] is None
        assert (phase["discriminator_trainable_params"] > 0) == (phase["objective"] in ("conditional", "unconditional"))
    lora, full = (next(p for p in report["phases"] if p["phase"] == name) for name in ("unconditional_lora", "unconditional_full"))
    assert 0 < lora["trainable_params"] < full["trainable_params"]
    assert report["resolution"] == 64 and report["gradient_checkpointing"] is True
