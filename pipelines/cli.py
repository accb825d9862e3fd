"""python -m pipelines generate|bench|plan — image generation, the side-by-side benchmark and the GPU memory plan from
the command line."""

import argparse
import sys
from pathlib import Path

from . import variants
from .errors import InvalidModel, InvalidRequest, StudioError, capped

# Only light imports above (no torch, no diffusers): --help and a mistake in the arguments answer at once.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
DEFAULT_OUT = "out.png"  # the file written when --out is omitted or names a folder

EPILOG_GENERATE = """examples:
  python -m pipelines generate "a red circle on the left" --model shapes --steps 32 --out c.png (offline, CPU)
  python -m pipelines generate "a red fox in snow" --model tiny --size 256 --out fox.png     (offline, CPU)
  python -m pipelines generate "a red fox in snow" --model lightning --steps 2 --out fox.png  (CUDA + hub weights)
  python -m pipelines generate "a red fox in snow" --model ./my-export --steps 4             (a `distill export` folder)
"""
EPILOG_BENCH = """example (GPU, the issue's configuration):
  python -m pipelines bench --model random-sdxl --device cuda --size 1024 --steps 1 2 --batch 1 4 \\
      --backend eager compile --vae full tiny --json docs/benchmarks/h100.json
"""
EPILOG_PLAN = """examples (no GPU and no weights needed):
  python -m pipelines plan --model lightning --vram 24 --json plan.json     (an RTX 4090 / L4 / A10G)
  python -m pipelines plan --model lightning --vram 16 --preview-vae tiny   (a T4)
  python -m pipelines plan --model shapes --vram 4
exit status 0 when the plan fits, 1 when it does not (the line says what to change)
"""
WEIGHTS_HELP = (
    "where the variants' own UNet weights wait: resident (a copy each on the device: fastest switch) or swap (host memory, "
    "pinned on CUDA, copied into the one UNet module in place when used); default: the memory plan's choice on CUDA, resident elsewhere"
)
MODEL_HELP = (
    "shapes (the embedded model trained on a world of coloured shapes, 128 px, offline), tiny (offline, built in code; pictures are noise), "
    "lightning (SDXL-Lightning full UNets, 1/2/4/8 steps), "
    "lightning-lora (LoRAs, 2/4/8 steps, on --base), random-sdxl (SDXL architecture, random weights), "
    "or a local folder (diffusers pipeline or a `distill export`). Default: lightning on CUDA, else shapes"
)


def _steps_help() -> str:
    """--steps' help, with the embedded model's variants and their labels (read from its manifest: no model loads)."""
    text = "denoising steps; must be a variant the model offers (default: the model's live variant, the one the studio types with)"
    try:
        return text + f". shapes offers {variants.resolve('shapes').describe_steps()}"
    except StudioError:  # the embedded model is missing: its own error says so when it is asked for
        return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipelines", description="SDXL-Lightning inference: generate images, benchmark the engine.")
    commands = parser.add_subparsers(dest="command", required=True)

    gen = commands.add_parser(
        "generate",
        help="write one image to a PNG",
        epilog=EPILOG_GENERATE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Generate an image from a prompt. The PNG's text metadata records prompt, seed, steps and model.",
    )
    gen.add_argument("prompt", help="what to draw (an empty string gives an unconditional image)")
    gen.add_argument("--model", default=None, help=MODEL_HELP)
    gen.add_argument("--base", default=None, help="SDXL base for lightning-lora (hub id or local folder; default SDXL base 1.0)")
    gen.add_argument("--steps", type=int, default=None, help=_steps_help())
    gen.add_argument("--seed", type=int, default=0, help="noise seed; the same seed gives the same image (default 0)")
    gen.add_argument("--size", type=int, default=None, help="image side in pixels, a multiple of 8 (default: the model's own size)")
    gen.add_argument("--width", type=int, default=None, help="overrides --size for the width")
    gen.add_argument("--height", type=int, default=None, help="overrides --size for the height")
    gen.add_argument("--vae", choices=("full", "tiny"), default="full", help="decoder: full SDXL VAE, or the tiny autoencoder (faster, less detail)")
    gen.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    gen.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), default=None, help="default float16 on CUDA, float32 on CPU")
    gen.add_argument(
        "--decode-dtype",
        choices=("float16", "bfloat16", "float32"),
        default=None,
        help="the decoders' precision (default: the model's); bfloat16 decodes ~1.5x faster on CPUs with native bf16",
    )
    gen.add_argument("--weights", choices=("resident", "swap"), default=None, help=WEIGHTS_HELP)
    gen.add_argument(
        "--out", default=DEFAULT_OUT, help=f"a .png, .jpg or .webp file, or an existing folder to write {DEFAULT_OUT} into (default {DEFAULT_OUT})"
    )

    bench = commands.add_parser(
        "bench",
        help="time the stock diffusers recipe and the engine side by side",
        epilog=EPILOG_BENCH,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Benchmark stock diffusers vs the engine on the same weights in one run; prints a table, writes JSON.",
    )
    bench.add_argument("--model", default="tiny", help="tiny or random-sdxl (or any --model of generate)")
    bench.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    bench.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), default=None)
    bench.add_argument("--decode-dtype", choices=("float16", "bfloat16", "float32"), default=None, help="the engine's decoders' precision")
    bench.add_argument("--size", type=int, default=None, help="image side (default 1024; 256 for tiny; 128 for shapes)")
    bench.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 8])
    bench.add_argument("--batch", type=int, nargs="+", default=[1])
    bench.add_argument("--backend", nargs="+", default=["eager"], choices=("eager", "compile", "tensorrt"))
    bench.add_argument("--vae", nargs="+", default=["full"], choices=("full", "tiny"))
    bench.add_argument("--repeats", type=int, default=5, help="timed repetitions per row (median reported)")
    bench.add_argument("--warmup", type=int, default=2, help="untimed repetitions per row before timing")
    bench.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice); 1 gives steadier numbers on a busy machine")
    bench.add_argument("--json", type=Path, default=None, help="write the results here")

    plan = commands.add_parser(
        "plan",
        help="will a model fit a GPU, and where its variants' weights should live",
        epilog=EPILOG_PLAN,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Exact weight bytes from the model's configs (meta device), activations at the largest batch and size (fake tensors), "
        "and a placement of every variant's weights: resident on the GPU or swapped in from pinned host memory. See docs/deploy.md.",
    )
    plan.add_argument("--model", default="lightning", help=MODEL_HELP)
    plan.add_argument("--base", default=None, help="SDXL base for lightning / lightning-lora")
    plan.add_argument("--variants", type=int, nargs="+", default=None, help="step counts to load (default: all the model offers)")
    plan.add_argument("--vram", type=float, default=None, help="the card's memory in GiB (default: this machine's first CUDA GPU)")
    plan.add_argument("--max-batch", type=int, default=4, help="most requests per engine call (the studio's --max-batch; default 4)")
    plan.add_argument("--sizes", nargs="+", default=None, help="served sizes as WxH or N (default: the model's own size)")
    plan.add_argument("--preview-vae", choices=("full", "tiny"), default="full", help="the live stream's decoder (the studio's --preview-vae)")
    plan.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), default="float16")
    plan.add_argument("--weights", choices=("resident", "swap"), default=None, help="force a placement instead of choosing one")
    plan.add_argument("--json", type=Path, default=None, help="write the plan here (fits, vram_bytes, predicted_peak_bytes, variants, ...)")
    return parser


def output_file(value: str) -> Path:
    """--out -> the file to write: an image file name, or an existing folder (DEFAULT_OUT inside it)."""
    path = Path(value)
    if path.is_dir():
        return path / DEFAULT_OUT
    if value.endswith(("/", "\\")):
        raise InvalidRequest(f"--out {capped(value)}: no such folder")
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise InvalidRequest(f"--out {capped(value)}: name a .png, .jpg or .webp file, or an existing folder")
    return path


# The models the default can turn out to be (pipelines.startup: lightning on CUDA, else shapes; tiny as the last
# resort), so that a step count or size none of them serves is refused before torch can say which it is.
DEFAULT_CANDIDATES = ("lightning", "shapes", "tiny")


def candidate_models(model: str | None, base: str | None, steps: int | None) -> tuple[str, list[variants.ModelSpec]]:
    """(how to name it in an error, the specs the run may use), from names and manifests alone."""
    if model is not None:
        spec = variants.resolve(model, base, (steps,) if steps else None)  # a plain diffusers folder serves the steps asked for
        return f"the {spec.name} model", [spec]
    found = []
    for name in DEFAULT_CANDIDATES:
        try:
            found.append(variants.resolve(name, base))
        except StudioError:  # e.g. the embedded model's files are gone: startup falls back past it too
            continue
    return "the default model (lightning on CUDA, else shapes)", found


def check_steps_and_sizes(args, what: str, specs: list[variants.ModelSpec]) -> None:
    """--steps against the variants offered, --size/--width/--height against the sides drawn, each flag named as the
    user gave it. With several candidates a value is refused only when none of them serves it."""
    if args.steps is not None and all(args.steps not in {v.steps for v in spec.variants} for spec in specs):
        offers = specs[0].describe_steps() if len(specs) == 1 else "; ".join(f"{spec.name}: {spec.describe_steps()}" for spec in specs)
        raise InvalidModel(f"--steps {args.steps}: {what} offers {offers}")
    low, high = min(spec.sizes()[0][0] for spec in specs), max(spec.sizes()[0][1] for spec in specs)
    for flag in ("size", "width", "height"):
        value = getattr(args, flag)
        if value is not None and (value % 8 or not low <= value <= high):
            raise InvalidRequest(f"--{flag} {value}: {what} draws sides that are multiples of 8 from {low} to {high} px")


def generate(args) -> None:
    out = output_file(args.out)
    what, specs = candidate_models(args.model, args.base, args.steps)  # no torch yet: a mistake is answered at once
    check_steps_and_sizes(args, what, specs)
    if args.model is not None:
        args.steps = args.steps or specs[0].default_steps  # load only the variant that runs

    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    from .conditioning import TOKEN_WINDOW
    from .requests import GenerationRequest
    from .startup import load_engine

    native = specs[0].sizes()[1] if args.model is not None else None  # the default model's side is known once loaded
    asked = (args.width or args.size or native, args.height or args.size or native)
    engine = load_engine(
        args.model,
        device=args.device,
        steps=[args.steps] if args.steps else None,
        dtype=args.dtype,
        base=args.base,
        preview_vae="tiny" if args.vae == "tiny" else None,
        decode_dtype=args.decode_dtype,
        weights=args.weights,
        sizes=(asked,) if all(asked) else None,  # the size asked for is the one declared (and checked against the model)
    )
    if engine.notice:
        print(engine.notice, file=sys.stderr)
    if args.model is None:  # now the default is known: its own range, still named by the flags given
        check_steps_and_sizes(args, f"the {engine.model_name} model", [engine.model.spec])
    size = engine.default_size
    request = GenerationRequest(args.prompt, seed=args.seed, steps=args.steps or engine.live_steps, width=asked[0] or size, height=asked[1] or size)
    engine.validate(request)
    result = engine.generate([request], vae=args.vae)[0]
    if result.dropped_tokens:
        print(f"note: the prompt is longer than the {TOKEN_WINDOW}-token window; {result.dropped_tokens} tokens were cut off", file=sys.stderr)
    metadata = PngInfo()
    for key, value in {
        "prompt": request.prompt,
        "seed": request.seed,
        "steps": request.steps,
        "model": engine.model_name,
        "size": f"{request.width}x{request.height}",
        "vae": args.vae,
    }.items():
        metadata.add_text(key, str(value))
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(result.image).save(out, pnginfo=metadata)  # PNG keeps the text chunks; JPEG and WebP ignore them
    timings = ", ".join(f"{k} {v:.0f} ms" for k, v in result.timings_ms.items())
    label = f" ({engine.labels[request.steps]})" if request.steps in engine.labels else ""
    print(f"wrote {out} ({request.width}x{request.height}, {request.steps} step(s){label}, seed {request.seed}, {engine.model_name}; {timings})")


def bench(args) -> None:
    from .bench import print_table, run_benchmark, write_json

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    size = args.size or {"tiny": 256, "shapes": 128}.get(args.model, 1024)
    report = run_benchmark(
        args.model,
        args.device,
        size,
        args.steps,
        args.batch,
        args.backend,
        args.vae,
        repeats=args.repeats,
        warmup=args.warmup,
        dtype=args.dtype,
        decode_dtype=args.decode_dtype,
    )
    if args.json:
        write_json(report, args.json)
    print_table(report)
    if args.json:
        print(f"wrote {args.json}")


def plan(args) -> int:
    import torch

    from . import memory_plan, startup
    from .sizes import parse as parse_sizes

    spec = variants.resolve(args.model, args.base, tuple(args.variants) if args.variants else None).restricted_to(args.variants)
    if args.vram is not None:
        vram = int(args.vram * memory_plan.GIB)
    elif torch.cuda.is_available():
        vram = torch.cuda.mem_get_info()[1]
    else:
        raise InvalidModel("no CUDA GPU here: give the card's memory with --vram GIB (e.g. --vram 24)")
    size = spec.sizes()[1]
    sizes = list(parse_sizes(args.sizes)) if args.sizes else [(size, size)]
    footprint = memory_plan.measure(spec, startup.DTYPES[args.dtype], args.max_batch, sizes, args.preview_vae)
    result = memory_plan.make_plan(footprint, vram, args.weights)
    print(result.summary())
    if args.json:
        memory_plan.write_json(result, args.json)
        print(f"wrote {args.json}")
    return 0 if result.fits else 1


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return {"generate": generate, "bench": bench, "plan": plan}[args.command](args) or 0
    except StudioError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
