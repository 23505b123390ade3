"""The ``epg`` command: ``epg preprocess | convert | push | sample | grid | evaluate | space``.

Each sub-command lives in its own module exposing ``add_arguments(parser)`` and ``run(args)``, imported only when
its command runs, so that ``epg --help`` stays fast and every ``--help`` works without the optional extras. A user
error (a bad path, label or number, a folder that is not a pipeline: a ``ValueError`` or ``OSError``) prints one
line naming the argument and exits with 2; ``--debug`` shows the traceback instead. A missing optional dependency
names the extra that installs it. Flags are spelled with dashes (``--output-dir``).
"""

import argparse
import importlib
import math
import sys

COMMANDS = {
    "preprocess": ("epg_diffusers.training.data", "center-crop a data set once (ADM crop) for training"),
    "convert": ("epg_diffusers.conversion", "convert a reference checkpoint into a diffusers folder"),
    "push": ("epg_diffusers.hub", "push a saved pipeline or encoder folder to the Hub (no checkpoints)"),
    "sample": ("epg_diffusers.evaluation.sample", "sample many images (accelerate launch for several processes)"),
    "grid": ("epg_diffusers.grid", "a labelled PNG grid of samples, one row per class (default: the shipped digits)"),
    "evaluate": ("epg_diffusers.evaluation.evaluate", "FID / sFID / IS / precision / recall of a sample npz"),
    "space": ("epg_diffusers.space", "write a self-contained Hugging Face Space (Gradio demo) folder, or push it"),
}
EXTRAS = {  # optional top-level module -> the extra of epg-diffusers that installs it
    "scipy": "eval", "torch_fidelity": "eval", "sklearn": "eval", "threadpoolctl": "eval",
    "torchvision": "train", "tensorboard": "train", "gradio": "demo",
}
USER_ERRORS = (ValueError, OSError)  # raised with a message naming the argument (bad input, not a bug)


def _number(text: str, kind, ok, requirement: str):
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not ok(value):
        raise argparse.ArgumentTypeError(f"must be {requirement}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (counts, sizes, steps)."""
    return _number(text, int, lambda v: v >= 1, "an integer >= 1")


def non_negative_int(text: str) -> int:
    """An argparse type: an integer >= 0 (seeds)."""
    return _number(text, int, lambda v: v >= 0, "an integer >= 0")


def finite_float(text: str) -> float:
    """An argparse type: a finite number (no nan or inf)."""
    return _number(text, float, math.isfinite, "a finite number")


def sigma_float(text: str) -> float:
    """An argparse type: a noise level, >= 0 and not nan (``inf`` allowed, e.g. for "guide every step")."""
    return _number(text, float, lambda v: v >= 0, "a number >= 0 (inf allowed)")


class OneLineParser(argparse.ArgumentParser):
    """argparse, with its errors on one line (no usage block) and exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="epg", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="on an error, show the full traceback")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        subparsers.add_parser(name, help=help_text, add_help=False)
    args, rest = parser.parse_known_args(argv)
    prog, debug = f"epg {args.command}", args.debug or "--debug" in rest
    try:
        module = importlib.import_module(COMMANDS[args.command][0])
        command_parser = OneLineParser(prog=prog, description=COMMANDS[args.command][1])
        module.add_arguments(command_parser)
        command_parser.add_argument("--debug", action="store_true", help="on an error, show the full traceback")
        return module.run(command_parser.parse_args(rest)) or 0
    except ModuleNotFoundError as error:
        extra = EXTRAS.get((error.name or "").split(".")[0])
        if extra is None or debug:
            raise
        print(f"{prog}: error: this needs {error.name}, which is not installed: "
              f"pip install 'epg-diffusers[{extra}]'", file=sys.stderr)
        return 2
    except USER_ERRORS as error:
        if debug:
            raise
        print(f"{prog}: error: {one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
