"""The ``epg`` command: ``epg convert | sample | grid | evaluate ...``.

Each sub-command lives in its own module exposing ``add_arguments(parser)`` and ``run(args)``; modules are
imported only when their command runs, so ``epg --help`` stays fast.
"""

import argparse
import importlib

COMMANDS = {
    "preprocess": ("epg_diffusers.training.data", "center-crop a data set once (ADM crop) for training"),
    "convert": ("epg_diffusers.conversion", "convert a reference checkpoint into a diffusers folder"),
    "push": ("epg_diffusers.hub", "push a saved pipeline or encoder folder to the Hub (no checkpoints)"),
    "sample": ("epg_diffusers.evaluation.sample", "sample many images (accelerate launch for several processes)"),
    "grid": ("epg_diffusers.grid", "a labelled PNG grid of samples, one row per class (default: the shipped digits)"),
    "evaluate": ("epg_diffusers.evaluation.evaluate", "FID / sFID / IS / precision / recall of a sample npz"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="epg", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        subparsers.add_parser(name, help=help_text, add_help=False)
    args, rest = parser.parse_known_args(argv)
    module = importlib.import_module(COMMANDS[args.command][0])
    command_parser = argparse.ArgumentParser(prog=f"epg {args.command}", description=COMMANDS[args.command][1])
    module.add_arguments(command_parser)
    return module.run(command_parser.parse_args(rest)) or 0


if __name__ == "__main__":
    raise SystemExit(main())
