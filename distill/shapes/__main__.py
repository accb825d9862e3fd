"""`python -m distill.shapes pretrain|eval|ship`: train the shapes world, judge a model, ship it into assets/."""

import argparse
import sys
from pathlib import Path

from pipelines.errors import StudioError

EPILOG = """examples:
  python -m distill.shapes pretrain --config distill/configs/shapes_pretrain.toml            # judge, autoencoders, base UNet
  python -m distill.shapes pretrain --config distill/configs/shapes_pretrain.toml --resume   # after a kill, at any moment
docs: docs/shapes.md"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m distill.shapes", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     description="The shapes world: a captioned world small enough to train SDXL's recipe on a CPU.")
    sub = parser.add_subparsers(dest="command", required=True)
    pre = sub.add_parser("pretrain", help="train the judge, the autoencoders and the base UNet (resumable)")
    pre.add_argument("--config", type=Path, required=True)
    pre.add_argument("--resume", action="store_true", help="continue the part that was running from its latest checkpoint")
    pre.add_argument("--parts", nargs="+", help="run only these parts (in pipeline order)")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "pretrain":
            from . import config, pretrain

            c = config.load(args.config)
            parts = tuple(p for p in pretrain.PARTS if not args.parts or p in args.parts)
            unknown = set(args.parts or ()) - set(pretrain.PARTS)
            if unknown:
                raise StudioError(f"--parts: unknown part(s) {sorted(unknown)}; the parts are {', '.join(pretrain.PARTS)}")
            pretrain.pretrain(c, resume=args.resume, parts=parts)
        return 0
    except StudioError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
