"""The compile backend serves only shapes it compiled at start: warm-up compiles each declared size at the two batch
buckets (1 and --max-batch), a partial batch is padded up to a bucket, and a fuzz run of random valid and invalid
messages (sizes outside the declared set included) compiles nothing more. Counted with torch's own counters, on
the CPU with the aot_eager compiler (whole-graph capture without minutes of C++ code generation)."""

import json

from realtime_fakes import serve, wait_until
from torch._dynamo.utils import counters

from pipelines import GenerationRequest, load_engine
from realtime import fuzz
from realtime.server import create_app
from realtime.studio import Studio, StudioConfig

SIZES = ((64, 64), (96, 64))
MAX_BATCH = 3


def graphs() -> int:
    return counters["stats"]["unique_graphs"]


def test_warm_up_compiles_two_graphs_per_size_and_requests_compile_nothing(tmp_path):
    before = graphs()
    engine = load_engine("tiny", device="cpu", steps=[1], backend="compile", compiler="aot_eager", compile_cache=False, sizes=SIZES, max_batch=MAX_BATCH)
    studio = Studio(engine, StudioConfig(max_batch=MAX_BATCH)).start()
    try:
        wait_until(lambda: studio.worker.ready, "the compiled warm-up", limit_s=600)
        assert studio.worker.warmup_error is None
        warm = graphs() - before
        # UNet and decoder, each at 2 sizes × 2 batch buckets: 8 graphs, where every batch size 1..3 would be 12.
        assert engine.batch_buckets == (1, MAX_BATCH) and warm == 2 * len(SIZES) * 2

        out = tmp_path / "fuzz.json"
        with serve(create_app(studio, ui=False)) as address:
            code = fuzz.main(["--url", f"ws://{address}/ws", "--messages", "150", "--clients", "3", "--rate", "25", "--seed", "7", "--json", str(out)])
        result = json.loads(out.read_text())
        assert code == 0 and result["ok"], result["failures"]
        assert result["answers"]["frame"] > 0 and result["answers"]["out_of_range"] > 0  # it rendered, and refused sizes
        # A partial batch (2 of 3) is padded to the bucket of 3; the padding's images are dropped.
        pair = [GenerationRequest("a cat", seed, 1, 96, 64) for seed in (1, 2)]
        results = engine.generate(pair)
        assert [r.request for r in results] == pair and [r.batch_size for r in results] == [2, 2]
        assert graphs() - before == warm  # zero compiles after warm-up
    finally:
        studio.stop()
