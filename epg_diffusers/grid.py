"""``epg grid``: a labelled PNG grid of class-conditional samples, one row per class.

    epg grid                                      # the shipped digits diffusion pipeline: every class, 8 per row
    epg grid pipelines/epg-digits-consistency --classes 3 7 --per-class 4 --output 3-and-7.png

Column ``j`` starts from the noise of ``torch.Generator("cpu").manual_seed(seed + j)`` in every row, so a column
shows the same noise under each class, and an image does not depend on the other classes or the batch size.
Images are upscaled with nearest neighbour to at least 64 px so that small models' samples stay legible.
"""

import argparse
import os
import tempfile
import time

import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont
import torch

from .cli import finite_float, non_negative_int, positive_int
from .defaults import (
    DIFFUSION_PIPELINE,
    DTYPES,
    add_sampling_arguments,
    configure_sampling,
    default_pipeline,
    load_pipeline,
)

MIN_CELL = 64  # shown size of one image in pixels (integer nearest-neighbour upscaling up to this)
PAD = 4  # white space around every image and label


def class_ids(pipe, classes: list[str | int] | None) -> list[int]:
    """Ids of ``classes`` (ids or names, as the pipeline's ``class_labels``; numeric strings are ids), default all."""
    if classes is None:
        return list(range(pipe.transformer.config.num_classes))
    labels = [int(c) if isinstance(c, str) and c.strip().isdecimal() else c for c in classes]
    try:
        return pipe.labels.resolve(labels)
    except ValueError as error:
        raise ValueError(f"`classes`={list(classes)}: {error}") from error


def class_name(pipe, class_id: int) -> str:
    """The first synonym of the class's name in ``id2label`` (e.g. "tench" of "tench, Tinca tinca"), else its id."""
    return pipe.config.id2label.get(class_id, str(class_id)).split(",")[0].strip()


def draw_grid(rows: list[list[PIL.Image.Image]], names: list[str]) -> PIL.Image.Image:
    """Rows of images on white, each row headed by its name; images upscaled with nearest neighbour."""
    size = rows[0][0].width
    cell = size * max(1, MIN_CELL // size)
    font = PIL.ImageFont.load_default(size=max(12, min(cell // 3, 32)))
    label_width = max(cell, *(int(font.getlength(name)) + 2 * PAD for name in names))
    width, height = label_width + len(rows[0]) * (cell + PAD) + PAD, len(rows) * (cell + PAD) + PAD
    grid = PIL.Image.new("RGB", (width, height), "white")
    draw = PIL.ImageDraw.Draw(grid)
    for r, (images, name) in enumerate(zip(rows, names)):
        top = PAD + r * (cell + PAD)
        draw.text((label_width / 2, top + cell / 2), name, fill="black", font=font, anchor="mm")
        for c, image in enumerate(images):
            grid.paste(image.resize((cell, cell), PIL.Image.Resampling.NEAREST), (label_width + c * (cell + PAD), top))
    return grid


def sample_grid(
    pipe,
    classes: list[str | int] | None = None,
    per_class: int = 8,
    *,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    autoguidance_scale: float | None = None,
    seed: int = 0,
    batch_size: int = 64,
) -> tuple[PIL.Image.Image, int]:
    """A labelled grid of ``per_class`` samples of each class (one row per class; see the module docstring).

    Args:
        pipe ([`EPGPipeline`]): the pipeline, already on its device.
        classes: class ids or names (default: every class of the pipeline).
        per_class: images per row; column j uses the seed ``seed + j``.
        num_inference_steps, guidance_scale, autoguidance_scale: as in the pipeline (None: its defaults).
        seed: the seed of the first column.
        batch_size: images per pipeline call (does not change the images).

    Returns:
        `tuple[PIL.Image.Image, int]`: the grid and the network evaluations spent per image.
    """
    if per_class < 1 or batch_size < 1:
        raise ValueError(f"`per_class`={per_class} and `batch_size`={batch_size} must be >= 1.")
    if seed < 0 or seed + per_class > 2**64:
        raise ValueError(f"`seed`={seed} must be >= 0 with `seed` + `per_class` <= 2**64.")
    ids = class_ids(pipe, classes)
    labels = [i for i in ids for _ in range(per_class)]
    seeds = [seed + j for _ in ids for j in range(per_class)]
    images, evaluations = [], 0
    for start in range(0, len(labels), batch_size):
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds[start : start + batch_size]]
        out = pipe(
            class_labels=labels[start : start + batch_size], num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale, autoguidance_scale=autoguidance_scale, generator=generators,
        )
        images += out.images
        evaluations = out.num_network_evaluations
    rows = [images[r * per_class : (r + 1) * per_class] for r in range(len(ids))]
    return draw_grid(rows, [class_name(pipe, i) for i in ids]), evaluations


def check_output(output: str) -> None:
    """Refuse an ``output`` that is not a writable .png path before any sampling (its folder is created)."""
    if not output.lower().endswith(".png"):
        raise ValueError(f"`output`={output!r} must be a .png file.")
    if os.path.isdir(output):
        raise ValueError(f"`output`={output!r} is a folder; name a .png file.")
    try:
        folder = os.path.dirname(os.path.abspath(output))
        os.makedirs(folder, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise ValueError(f"`output`={output!r} is not writable: {error}") from error


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``epg grid``."""
    parser.add_argument("pipeline", nargs="?", default=None,
                        help="a saved EPG pipeline folder or a Hub repo id (org/name); default: the shipped "
                             f"digits diffusion pipeline, pipelines/{DIFFUSION_PIPELINE} of a repository checkout")
    parser.add_argument("--output", default="epg-grid.png", help="the PNG to write (default: epg-grid.png)")
    parser.add_argument("--classes", nargs="+", default=None, metavar="CLASS",
                        help="class ids or names, one row each (quote names with spaces); default: every class")
    parser.add_argument("--per-class", type=positive_int, default=8, help="images per class (columns; default 8)")
    parser.add_argument("--num-inference-steps", type=positive_int, default=None, help="default: the pipeline's")
    parser.add_argument("--guidance-scale", type=finite_float, default=None, help="default: the pipeline's (1 = off)")
    add_sampling_arguments(parser)
    parser.add_argument("--seed", type=non_negative_int, default=0,
                        help="column j uses seed + j in every row (default 0)")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="images per forward (does not change them)")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="fp32", help="model weights")
    parser.add_argument("--revision", default=None, help="Hub revision of the pipeline")


def run(args: argparse.Namespace) -> int:
    """Load the pipeline, sample the grid, write the PNG and say what it cost."""
    check_output(args.output)
    pipeline = args.pipeline or default_pipeline()
    device = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else "cpu"
    pipe = load_pipeline(pipeline, args.dtype, args.revision).to(device)
    steps = configure_sampling(pipe, args)
    start = time.perf_counter()
    grid, evaluations = sample_grid(
        pipe, args.classes, args.per_class, num_inference_steps=steps, guidance_scale=args.guidance_scale,
        autoguidance_scale=args.autoguidance_scale, seed=args.seed, batch_size=args.batch_size,
    )
    seconds = time.perf_counter() - start
    grid.save(args.output)
    rows = len(args.classes) if args.classes else pipe.transformer.config.num_classes
    print(f"wrote {args.output}: {rows} classes x {args.per_class} images from {pipeline} "
          f"({evaluations} network evaluations per image, sampled in {seconds:.1f} s on {device})")
    return 0
