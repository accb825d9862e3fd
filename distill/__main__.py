"""`python -m distill plan|precompute|train|export` (and `accelerate launch -m distill train --config ...`).

Every command parses and checks the config first, so an impossible plan is refused before any model loads.
"""

import argparse
import logging
import sys
from pathlib import Path

from pipelines.errors import StudioError

from .config import config_summary, describe, load_config, packaged_configs

EPILOG = """examples:
  python -m distill plan --list                             # the packaged plans, by name
  python -m distill plan --config tiny                      # a packaged plan by name (distill/configs/tiny.toml)
  python -m distill precompute --config my.toml            # VAE latents + text embeddings -> safetensors shards
  python -m distill train --config tiny
  python -m distill train --config my.toml --resume         # continue the exact stage, phase and step
  python -m distill train --config ablation.toml --branch-from runs/my   # reuse the stages both plans share
  accelerate launch --config_file distill/configs/accelerate_ddp.yaml -m distill train --config my.toml
  python -m distill export --config my.toml --out exports/my-lightning
docs: docs/distill.md"""


CONFIG_HELP = "the plan: a TOML file (see docs/distill.md) or a packaged plan's name, e.g. tiny or shapes (see plan --list)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m distill",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Progressive adversarial distillation of SDXL (SDXL-Lightning, arXiv 2402.13929).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    plan = sub.add_parser("plan", help="check a config and print the resolved stage/phase plan")
    plan_choice = plan.add_mutually_exclusive_group(required=True)
    plan_choice.add_argument("--config", help=CONFIG_HELP)
    plan_choice.add_argument("--list", action="store_true", help="list the packaged plans, which --config takes by name")

    pre = sub.add_parser("precompute", help="cache VAE latents and text embeddings (or teacher-generated latents in prompts mode)")
    pre.add_argument("--config", required=True, help="the plan; its [data] table says what to cache (a TOML file or a packaged plan's name)")
    pre.add_argument("--out", type=Path, help="cache folder (default: <train.output_dir>/cache)")
    pre.add_argument("--device", default=None, help="default: cuda when available")
    pre.add_argument("--batch-size", type=int, default=8)

    train = sub.add_parser("train", help="run the plan (resumable); launch with `accelerate launch` for several GPUs")
    train.add_argument("--config", required=True, help=CONFIG_HELP)
    train.add_argument("--resume", action="store_true", help="continue from <train.output_dir>/checkpoints/latest")
    train.add_argument(
        "--branch-from", type=Path, metavar="RUN_DIR", help="reuse the finished leading stages of another run that this plan shares (and its latent cache)"
    )
    train.add_argument(
        "--stop-after", type=int, metavar="N", help="stop abruptly after N optimizer steps of this process, without checkpointing (simulates a kill)"
    )

    export = sub.add_parser("export", help="write each stage's UNet, LoRA files and the manifest the app loads")
    export.add_argument("--config", required=True, help="the plan that was trained (finds its output_dir); a TOML file or a packaged plan's name")
    export.add_argument("--out", type=Path, required=True, help="folder to write (load it with `--model <folder>`)")
    export.add_argument("--stages", nargs="*", help="stage names to export (default: every finished stage)")
    export.add_argument(
        "--base-lora-rank",
        type=int,
        default=64,
        help="rank of each stage's LoRA relative to the original base (low-rank extraction of student - base; 0: skip)",
    )
    return parser


def _default_device() -> str:
    import torch  # only for a command that loads models anyway: --help and plan stay free of torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)  # the run's messages, as before on stdout
    try:
        if args.command == "plan" and args.list:
            print("\n".join(f"{name:<28} {config_summary(path)}" for name, path in packaged_configs().items()))
            return
        config = load_config(args.config)
        if args.command == "plan":
            print(describe(config))
        elif args.command == "precompute":
            from . import data, stages

            out = args.out or Path(config.train.output_dir) / "cache"
            index = data.precompute(config, stages.load_components(config.model), out, args.device or _default_device(), args.batch_size)
            print(
                f"cached {index['count']} samples in {len(index['shards'])} shard(s) under {out}; skipped {index['skipped']} "
                f"{index['skipped_reasons'] or ''}".rstrip()
            )
        elif args.command == "train":
            from . import train

            if args.branch_from:
                from .branch import branch

                shared = branch(config, args.branch_from)
                print(
                    f"branching from {args.branch_from}: reusing stage(s) {', '.join(shared)}"
                    if shared
                    else f"branching from {args.branch_from}: no stage in common (the first stage's plan differs); training all"
                )
            train.train(config, resume=args.resume, stop_after=args.stop_after)
        elif args.command == "export":
            from . import export

            folder = export.export(config, args.out, args.stages, args.base_lora_rank or None)
            print(f'exported to {folder}; try it: python -m pipelines generate --model {folder} --steps N "a prompt" (or python app.py --model {folder})')
    except StudioError as e:
        parser.exit(2, f"error: {e}\n")


if __name__ == "__main__":
    sys.exit(main())
