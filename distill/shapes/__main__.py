"""`python -m distill.shapes pretrain|ship|ship-students|render|eval|backgrounds|compare`: train the shapes world, ship it (and
its distilled students) into assets/, judge models."""

import argparse
import logging
import sys
from pathlib import Path

from pipelines.errors import StudioError

EPILOG = """examples:
  python -m distill.shapes pretrain --config shapes_pretrain            # judge, autoencoders, base UNet
  python -m distill.shapes pretrain --config shapes_pretrain --resume   # after a kill, at any moment
  python -m distill.shapes ship --config shapes_pretrain                # -> assets/models/shapes
  python -m distill.shapes ship-students --student 4=runs/exports/shapes-mse --live-steps 4   # a student serves 4 steps
  python -m distill.shapes eval --model shapes --steps 32 --json out.json                    # judge a model's variant
  python -m distill.shapes backgrounds --model shapes --steps 32 --json bg.json                 # asked background or the noise's?
  python -m distill.shapes render --out runs/shapes-data --count 10000                       # captioned images for distill
  python -m distill.shapes compare --row "base=shapes:32,1" --row "MSE=runs/exports/mse:1" --json t.json   # one table
  python -m distill.shapes compare --row "base=shapes:2" --row "new=runs/exports/x:2" --paired base:2,new:2 --json t.json  # new - base
docs: docs/shapes.md"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m distill.shapes",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="The shapes world: a captioned world small enough to train SDXL's recipe on a CPU.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    pre = sub.add_parser("pretrain", help="train the judge, the autoencoders and the base UNet (resumable)")
    pre.add_argument("--config", required=True, help="the pre-training config: a TOML file or a packaged name (shapes_pretrain)")
    pre.add_argument("--resume", action="store_true", help="continue the part that was running from its latest checkpoint")
    pre.add_argument("--parts", nargs="+", help="run only these parts (in pipeline order)")
    pre.add_argument(
        "--import-from",
        type=Path,
        default=None,
        help="take the judge and autoencoders from this model folder (e.g. assets/models/shapes) instead of training them",
    )

    ship = sub.add_parser("ship", help="write the finished base model (fp16) and the judge into assets/")
    ship.add_argument("--config", required=True, help="the pre-training config that was run (a file or a packaged name)")
    ship.add_argument("--out", type=Path, default=None, help="model folder (default: the embedded assets/models/shapes)")
    ship.add_argument(
        "--judge-out",
        type=Path,
        default=None,
        help="also write the judge here (default: the shipped assets/shapes_judge.safetensors when --out is not given; "
        "with --out, no judge is written, so a trial model never replaces the judge every benchmark uses)",
    )

    students = sub.add_parser("ship-students", help="serve step counts of the embedded model with distilled students (fp16)")
    students.add_argument(
        "--student",
        dest="students",
        action="append",
        default=[],
        metavar="STEPS=EXPORT_DIR",
        help="this step count is served by that `distill export` folder's student (repeat; none: the base serves all)",
    )
    students.add_argument("--live-steps", type=int, required=True, help="the variant the live stream types with")
    students.add_argument("--model", type=Path, default=None, help="model folder (default: the embedded assets/models/shapes)")

    record = sub.add_parser("record-adherence", help="write each variant's measured adherence into the model's manifest")
    record.add_argument("--json", type=Path, required=True, help="a `compare` JSON with one row per variant's step count, judged on the shipped weights")
    record.add_argument("--model", type=Path, default=None, help="model folder (default: the embedded assets/models/shapes)")

    render = sub.add_parser("render", help="write training scenes as name.png + name.txt (a `distill` data folder)")
    render.add_argument("--out", type=Path, required=True)
    render.add_argument("--count", type=int, required=True, help="how many scenes (the first N training scenes)")
    render.add_argument(
        "--config", default="shapes_pretrain", help="the pre-training config whose world (seed, resolution) to render (a file or a packaged name)"
    )
    render.add_argument("--caption-seed", type=int, default=0, help="seed of the caption phrasing drawn for each scene")

    cmp = sub.add_parser("compare", help="one table (and grid) across models and step counts, same prompts and seeds")
    cmp.add_argument(
        "--row",
        dest="rows",
        action="append",
        required=True,
        metavar="LABEL=MODEL:STEPS[,STEPS]",
        help="MODEL: anything --model takes, lora-phases:RUN_DIR, from-base:EXPORT_DIR or checkpoints:RUN_DIR (see distill/shapes/compare.py)",
    )
    cmp.add_argument(
        "--paired",
        dest="pairs",
        action="append",
        default=[],
        metavar="A_LABEL:STEPS,B_LABEL:STEPS",
        help="also report B minus A on the same prompts and seeds: adherence (with McNemar's test) and Fréchet distance, each with a 95%% interval (repeat)",
    )
    cmp.add_argument("--json", type=Path, required=True)
    cmp.add_argument("--grid", type=Path, default=None)
    add_sampling_arguments(cmp, prompts_per_group=256)

    bg = sub.add_parser("backgrounds", help="does the model draw the asked background, or the one its noise suggests?")
    bg.add_argument("--model", nargs="+", default=["shapes"], help="one or more models (anything --model takes)")
    bg.add_argument("--steps", type=int, nargs="+", required=True, help="the variants (step counts) to measure")
    bg.add_argument("--seeds", type=int, default=16, help="seeds per prompt (the same for every asked background)")
    bg.add_argument("--json", type=Path, required=True)
    bg.add_argument("--judge", type=Path, default=None, help="judge weights (default: the shipped one)")
    bg.add_argument("--threads", type=int, default=None, help="torch CPU threads")

    ev = sub.add_parser("eval", help="generate the evaluation prompts with a model variant and score them with the judge")
    ev.add_argument("--model", default="shapes", help="anything --model takes: shapes, a distill export folder, ...")
    ev.add_argument("--steps", type=int, nargs="+", required=True, help="the variants (step counts) to evaluate, one row each")
    ev.add_argument("--json", type=Path, required=True, help="where to write the metrics")
    ev.add_argument("--grid", type=Path, default=None, help="also write a PNG: the same prompts and seed across the rows")
    ev.add_argument("--round-trip", action="store_true", help="add a row: real renders through the model's autoencoder (its ceiling)")
    ev.add_argument("--judge", type=Path, default=None, help="judge weights (default: the shipped one)")
    add_sampling_arguments(ev, prompts_per_group=32)
    return parser


def add_sampling_arguments(parser: argparse.ArgumentParser, prompts_per_group: int) -> None:
    """How many images the judge sees, and how its intervals are drawn (shared by eval and compare)."""
    parser.add_argument(
        "--prompts-per-group",
        "--per-group",
        dest="per_group",
        type=int,
        default=prompts_per_group,
        help=f"prompts per group (single, two, held_out; smaller sets are prefixes of larger ones; default {prompts_per_group})",
    )
    parser.add_argument("--seeds", type=int, default=4, help="seeds per prompt")
    parser.add_argument("--bootstrap", type=int, default=200, help="resamples of the prompts for the 95%% intervals (default 200)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (timings are steadier with 1)")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)  # the run's messages, as before on stdout
    try:
        if args.command == "pretrain":
            from . import config

            c = config.load(args.config)  # before the heavy imports: a wrong config is answered at once
            from . import pretrain

            parts = tuple(p for p in pretrain.PARTS if not args.parts or p in args.parts)
            unknown = set(args.parts or ()) - set(pretrain.PARTS)
            if unknown:
                raise StudioError(f"--parts: unknown part(s) {sorted(unknown)}; the parts are {', '.join(pretrain.PARTS)}")
            if args.import_from:
                from .ship import JUDGE_FILE

                imported = pretrain.import_parts(c, args.import_from, JUDGE_FILE)
                print(f"imported {', '.join(imported) or 'nothing (those parts were finished)'} from {args.import_from}")
            pretrain.pretrain(c, resume=args.resume, parts=parts)
        elif args.command == "ship":
            from . import config

            c = config.load(args.config)
            from . import ship

            judge_out = args.judge_out or (None if args.out else ship.JUDGE_FILE)
            out = ship.ship(c, args.out or ship.SHAPES_FOLDER, judge_out=judge_out)
            print(f"wrote {out}" + (f" and {judge_out}" if judge_out else ""))
        elif args.command == "ship-students":
            from . import ship

            students = dict(parse_student(text) for text in args.students)
            out = ship.ship_students(students, args.live_steps, args.model or ship.SHAPES_FOLDER)
            print(f"{out}: " + ", ".join(f"{n} steps from {path}" for n, path in sorted(students.items())) + f"; live {args.live_steps} steps")
        elif args.command == "record-adherence":
            from . import ship

            measured = ship.record_adherence(args.json, args.model or ship.SHAPES_FOLDER)
            print("adherence " + ", ".join(f"{n} steps {a:.1%}" for n, a in sorted(measured.items(), reverse=True)) + f" from {args.json}")
        elif args.command == "render":
            from . import config

            world = config.load(args.config).world
            from . import data

            written = data.render_folder(args.out, args.count, world.seed, world.resolution, args.caption_seed)
            print(f"wrote {written} captioned scenes ({world.resolution} px) to {args.out}")
        elif args.command == "eval":
            run_eval(args)
        elif args.command == "backgrounds":
            run_backgrounds(args)
        elif args.command == "compare":
            run_compare(args)
        return 0
    except StudioError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def parse_student(text: str) -> tuple[int, Path]:
    steps, sep, folder = text.partition("=")
    if not sep or not steps.isdigit() or not folder:
        raise StudioError(f"--student {text!r}: expected STEPS=EXPORT_DIR, e.g. 4=runs/exports/shapes-mse")
    return int(steps), Path(folder)


def load_judge(args):
    import torch

    from . import judge
    from .ship import JUDGE_FILE

    if args.threads:
        torch.set_num_threads(args.threads)
    judge_path = getattr(args, "judge", None) or JUDGE_FILE
    if not Path(judge_path).is_file():
        raise StudioError(f"judge weights {judge_path} do not exist (python -m distill.shapes pretrain --parts judge, then ship)")
    return judge.load(judge_path)


def run_eval(args) -> None:
    from pipelines import load_engine

    from . import evaluate

    scorer = load_judge(args)
    engine = load_engine(args.model, device="cpu", steps=args.steps)
    resolution = evaluate.judged_resolution(engine, scorer, args.model)
    rows = [evaluate.evaluate(engine, scorer, n, args.per_group, args.seeds, resolution, args.bootstrap) for n in args.steps]
    if args.round_trip:
        rows.append(evaluate.round_trip(engine.pipe.vae, scorer, args.per_group, args.seeds, resolution, args.bootstrap))
    evaluate.write_json(rows, args.json, args.model)
    print(evaluate.markdown_table(rows, args.model))
    if args.grid:
        evaluate.save_grid(rows, args.grid)
        print(f"wrote {args.grid}")


def run_backgrounds(args) -> None:
    from pipelines import load_engine

    from . import backgrounds

    scorer = load_judge(args)
    rows = []
    for model in args.model:
        engine = load_engine(model, device="cpu", steps=args.steps)
        rows += [{"model": model} | backgrounds.measure(engine, scorer, n, args.seeds, model=model) for n in args.steps]
    backgrounds.write_json(rows, args.json)
    print(backgrounds.markdown_table(rows))


def run_compare(args) -> None:
    from . import compare, evaluate

    rows = [compare.parse_row(text) for text in args.rows]
    pairs = [compare.parse_pair(text) for text in args.pairs]
    compare.check_pairs(pairs, rows)  # before the long run: a wrong pair is answered at once
    results = compare.compare(rows, load_judge(args), args.per_group, args.seeds, args.bootstrap)
    comparisons = [compare.paired(results, pair, args.bootstrap) for pair in pairs]
    evaluate.write_json(results, args.json, "compare", comparisons)
    print(evaluate.markdown_table(results, "compare"))
    for comparison in comparisons:
        print("\n" + compare.paired_table(comparison))
    if args.grid:
        evaluate.save_grid(results, args.grid)
        print(f"wrote {args.grid}")


if __name__ == "__main__":
    sys.exit(main())
