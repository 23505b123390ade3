"""Every value is checked where it enters: pipeline configs, weights, sampling arguments, command-line flags; NaN and
inf are refused with the argument (or tensor) named instead of turning into black images."""

import json
import struct

import numpy as np
import pytest
import torch

from epg_diffusers import EPGHeunScheduler, EPGPipeline, EPGTransformer2DModel
from epg_diffusers.conversion import convert
from epg_diffusers.pipelines import NonFiniteSampleError

from .conftest import TINY_LABELS, cli_error, tiny_pipeline, tiny_transformer
from .test_conversion import TINY_ARCH, reference_folder


def saved(tmp_path, **index_changes):
    """A tiny pipeline saved to ``tmp_path``, with ``model_index.json`` entries changed as given."""
    tiny_pipeline().save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    (tmp_path / "model_index.json").write_text(json.dumps({**index, **index_changes}))
    return tmp_path


@pytest.mark.parametrize("changes, message", [
    (dict(image_mean=[0.5]), r"`image_mean` must be 3 finite numbers, one per channel, got \[0.5\]"),
    (dict(image_std=[0.5, 0.5, 0.0]), r"`image_std` must be positive"),
    (dict(id2label={str(i): str(i) for i in range(5)}), r"`id2label` must name the model's 10 classes .* missing \[5, 6"),
    (dict(default_num_inference_steps=0), r"`default_num_inference_steps` must be an integer >= 1, got 0"),
    (dict(default_guidance_scale=-1), r"`default_guidance_scale` must be a finite number >= 0, got -1"),
    (dict(default_guidance_interval=[2, 1]), r"`default_guidance_interval` must be \(low, high\)"),
])
def test_a_bad_pipeline_config_is_refused_at_load(tmp_path, changes, message):
    with pytest.raises(ValueError, match=message):
        EPGPipeline.from_pretrained(saved(tmp_path, **changes))


def test_the_same_checks_in_the_constructor():
    transformer, scheduler = tiny_transformer(), EPGHeunScheduler(image_size=16)
    with pytest.raises(ValueError, match="`id2label` must name the model's 10 classes"):
        EPGPipeline(transformer, scheduler, id2label={0: "zero"})
    with pytest.raises(ValueError, match="`default_guidance_scale` must be a finite number >= 0, got nan"):
        EPGPipeline(transformer, scheduler, id2label=TINY_LABELS, default_guidance_scale=float("nan"))


def overwrite_weights(path, offset: int, data: bytes):
    """Overwrite bytes of a safetensors file's tensor data (its header left intact)."""
    raw = bytearray(path.read_bytes())
    start = 8 + struct.unpack("<Q", raw[:8])[0] + offset
    raw[start : start + len(data)] = data
    path.write_bytes(bytes(raw))


def test_corrupt_or_missing_weights_are_refused_at_load(tmp_path):
    folder = saved(tmp_path / "corrupt")
    overwrite_weights(folder / "transformer" / "diffusion_pytorch_model.safetensors", 1000, b"\xff" * 4000)  # NaN
    with pytest.raises(ValueError, match=r"weight '.*' holds non-finite values \(NaN or inf\); the file is corrupt"):
        EPGPipeline.from_pretrained(folder)
    folder = saved(tmp_path / "missing")
    (folder / "transformer" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ValueError, match=r"transformer' has a config.json but no weights \(diffusion_pytorch_model"):
        EPGPipeline.from_pretrained(folder)
    with pytest.raises(ValueError, match="has a config.json but no weights"):
        EPGTransformer2DModel.from_pretrained(folder, subfolder="transformer")


def test_non_finite_samples_raise_instead_of_black_images():
    pipe = tiny_pipeline()
    with torch.no_grad():
        pipe.transformer.out.bias[0] = float("nan")  # weights gone bad in memory (inf alone is clipped to 1)
    with pytest.raises(NonFiniteSampleError, match=r"non-finite values \(NaN or inf\) in image\(s\) \[0, 1\]"):
        pipe(class_labels=[1, 2], num_inference_steps=3, guidance_scale=2.0)


def test_convert_refuses_bad_stored_defaults(tmp_path, reference, capsys):
    source = reference_folder(tmp_path, "dm", ema=reference["sub"]("tiny32/dm/"))
    with pytest.raises(ValueError, match="`default_guidance_scale` must be a finite number >= 0, got -1"):
        convert(source, tmp_path / "out", kind="diffusion", guidance_scale=-1.0, **TINY_ARCH)
    with pytest.raises(ValueError, match=r"`default_guidance_interval` must be \(low, high\)"):
        convert(source, tmp_path / "out", kind="diffusion", guidance_interval=(2.0, 1.0), **TINY_ARCH)
    assert not (tmp_path / "out").exists()  # nothing written
    error = cli_error(capsys, ["convert", str(source), str(tmp_path / "out"), "--num-inference-steps", "0"])
    assert "argument --num-inference-steps: must be an integer >= 1, got '0'" in error


def test_evaluate_checks_flags_files_and_output_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    np.savez(tmp_path / "samples.npz", np.zeros((10, 16, 16, 3), np.uint8), np.arange(10))
    assert "--batch-size: must be an integer >= 1, got '0'" in cli_error(capsys, ["evaluate", "a", "b", "--batch-size", "0"])
    assert "--resolution: must be an integer >= 1" in cli_error(capsys, ["evaluate", "a", "--resolution", "0"])
    assert "`ref_npz`='missing.npz' does not exist" in cli_error(capsys, ["evaluate", "missing.npz", "samples.npz"])
    (tmp_path / "folder").mkdir()
    assert "`ref_npz`='folder' is a folder, not an npz file" in cli_error(capsys, ["evaluate", "folder", "samples.npz"])

    def never(*args, **kwargs):
        raise AssertionError("metrics were computed before --output was checked")

    monkeypatch.setattr("epg_diffusers.evaluation.evaluate.evaluate_small_data", never)
    error = cli_error(capsys, ["evaluate", "--small-data", "digits", "samples.npz", "--output", "no/such/dir/m.json"])
    assert "`output`='no/such/dir/m.json' is not writable" in error
    assert "`output`='folder' is a folder" in cli_error(capsys, ["evaluate", "--small-data", "digits", "samples.npz",
                                                                 "--output", "folder"])
