"""``epg grid``: one labelled row per class, column j seeded with seed + j, and clear errors for bad input."""

import re

import numpy as np
import PIL.Image
import pytest
import torch

from epg_diffusers import cli
from epg_diffusers.grid import MIN_CELL, PAD, sample_grid

from .conftest import cli_error, tiny_pipeline

STEPS = {"num_inference_steps": 2}  # 2 Heun points, neither in the guidance interval: 2 evaluations


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline()


def label_width(grid: PIL.Image.Image, columns: int = 3) -> int:
    """The label column's width (it fits the longest class name)."""
    return grid.width - columns * (MIN_CELL + PAD) - PAD


def cell(grid: PIL.Image.Image, row: int, column: int) -> np.ndarray:
    left, top = label_width(grid) + column * (MIN_CELL + PAD), PAD + row * (MIN_CELL + PAD)
    return np.asarray(grid.crop((left, top, left + MIN_CELL, top + MIN_CELL)))


def test_rows_are_classes_and_columns_are_seeds(pipe):
    grid, evaluations = sample_grid(pipe, ["hammerhead", "1"], per_class=3, seed=5, **STEPS)
    assert evaluations == 2
    assert grid.height == 2 * (MIN_CELL + PAD) + PAD  # two rows of 16 px images shown at 64 px
    for row, label in enumerate([4, 1]):
        for column in range(3):
            alone = pipe(label, generator=torch.Generator().manual_seed(5 + column), **STEPS).images[0]
            expected = np.asarray(alone.resize((MIN_CELL, MIN_CELL), PIL.Image.Resampling.NEAREST))
            assert np.array_equal(cell(grid, row, column), expected)
    assert label_width(grid) > MIN_CELL  # widened to fit "hammerhead"
    label = np.asarray(grid.crop((0, PAD, label_width(grid), PAD + MIN_CELL)))
    assert (label < 128).any() and (label == 255).mean() > 0.5  # dark text on white


def test_batch_size_does_not_change_the_grid(pipe):
    one, _ = sample_grid(pipe, [0, 2], per_class=3, batch_size=64, **STEPS)
    two, _ = sample_grid(pipe, [0, 2], per_class=3, batch_size=2, **STEPS)
    assert np.array_equal(np.asarray(one), np.asarray(two))


def test_default_is_every_class_of_the_shipped_pipeline(tmp_path, capsys):
    output = tmp_path / "new" / "digits.png"  # the folder is created
    assert cli.main(["grid", "--output", str(output), "--per-class", "2", "--num-inference-steps", "2"]) == 0
    with PIL.Image.open(output) as grid:
        assert grid.format == "PNG"
        assert grid.size == (MIN_CELL + 2 * (MIN_CELL + PAD) + PAD, 10 * (MIN_CELL + PAD) + PAD)  # short names
    printed = capsys.readouterr().out
    assert f"wrote {output}: 10 classes x 2 images from " in printed and "epg-digits-diffusion" in printed
    assert "network evaluations per image" in printed


@pytest.mark.parametrize("argv, message", [
    (["--per-class", "0"], r"argument --per-class: must be an integer >= 1, got '0'"),
    (["--batch-size", "0"], r"argument --batch-size: must be an integer >= 1, got '0'"),
    (["--seed", "-1"], r"argument --seed: must be an integer >= 0, got '-1'"),
    (["--classes", "3", "10"], r"`classes`=\['3', '10'\]: .* 10, outside the valid range \[0, 9\]"),
    (["--classes", "nine"], r"`classes`=\['nine'\]: .* unknown class name 'nine'"),
    (["--num-inference-steps", "0"], r"argument --num-inference-steps: must be an integer >= 1"),
    (["--guidance-scale", "-1"], r"`guidance_scale` must be a finite number >= 0, got -1.0"),
    (["--guidance-scale", "nan"], r"argument --guidance-scale: must be a finite number, got 'nan'"),
])
def test_bad_input_is_refused_clearly(tmp_path, capsys, argv, message):
    assert re.search(message, cli_error(capsys, ["grid", "--output", str(tmp_path / "grid.png"), *argv]))
    assert not (tmp_path / "grid.png").exists()


def test_bad_output_or_pipeline_is_refused_before_sampling(tmp_path, capsys):
    def refused(argv, message):
        assert re.search(message, cli_error(capsys, ["grid", *argv]))

    refused(["--output", str(tmp_path / "grid.jpg")], r"`output`=.*grid.jpg' must be a .png file")
    (tmp_path / "folder.png").mkdir()
    refused(["--output", str(tmp_path / "folder.png")], r"`output`=.*folder.png' is a folder")
    (tmp_path / "file").write_text("a file, not a folder")
    refused(["--output", str(tmp_path / "file" / "grid.png")], r"`output`=.* is not writable")
    refused([str(tmp_path / "missing"), "--output", str(tmp_path / "grid.png")], r"cannot load `pipeline`=")
