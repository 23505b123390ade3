"""``epg sample``: the set depends only on the settings (not on batch size or process count), resumes without
duplicates or gaps, records its settings, and refuses bad input clearly."""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from epg_diffusers.evaluation import balanced_labels, random_labels
from epg_diffusers.evaluation import sample as sample_command
from epg_diffusers.evaluation import sample_images
from epg_diffusers.pipelines import NonFiniteSampleError

from .conftest import tiny_pipeline

ROOT = Path(__file__).parent.parent
LAUNCH = (sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no")
# 10 images of the 10 classes, 2 Heun points, guided at every evaluation: 2 x 2 network evaluations per image
SETTINGS = {"num_samples": 10, "num_inference_steps": 2, "guidance_scale": 2.0,
            "guidance_interval": (0.0, float("inf"))}
FLAGS = ["--num-samples", "10", "--num-inference-steps", "2", "--guidance-scale", "2",
         "--guidance-interval", "0", "inf"]


def read(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(folder / "samples.npz") as data:
        return data["arr_0"], data["arr_1"]


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline()


@pytest.fixture(scope="module")
def reference(pipe, tmp_path_factory):
    """The set sampled in this process with batch size 3, saved as npz and PNGs."""
    folder = tmp_path_factory.mktemp("reference")
    settings = sample_images(pipe, str(folder), batch_size=3, save="both", **SETTINGS)
    return folder, settings


def test_labels_are_balanced_or_seeded():
    assert balanced_labels(20, 10).tolist() == [c for c in range(10) for _ in range(2)]
    with pytest.raises(ValueError, match=r"`num_samples`=25 is not a multiple of the 10 classes.*Use 20 or 30"):
        balanced_labels(25, 10)
    labels = random_labels(1000, 10, seed=3)
    assert np.array_equal(labels, random_labels(1000, 10, seed=3)) and set(labels.tolist()) == set(range(10))


def test_settings_and_outputs(reference):
    folder, settings = reference
    images, labels = read(folder)
    assert images.shape == (10, 16, 16, 3) and images.dtype == np.uint8 and labels.tolist() == list(range(10))
    assert len({image.tobytes() for image in images}) == 10  # ten different images
    pngs = np.stack([np.asarray(PIL.Image.open(folder / "images" / f"{i:06d}.png")) for i in range(10)])
    assert np.array_equal(pngs, images)
    stored = json.loads((folder / "settings.json").read_text())
    assert stored == settings and stored["status"] == "complete"
    assert stored["sampler"] == "EPGHeunScheduler" and stored["num_network_evaluations"] == 4
    assert stored["guidance_scale"] == 2.0 and stored["guidance_interval"] == [0.0, float("inf")]
    assert stored["seed"] == 0 and "manual_seed(seed + i)" in stored["seeds"] and stored["labels"] == "balanced"
    assert not (folder / "parts").exists()


@pytest.mark.parametrize("batch_size", [1, 4, 10])
def test_same_uint8_images_with_another_batch_size(pipe, reference, tmp_path, batch_size):
    """Floats move by ~1e-4 between batch shapes on a CPU; the saved uint8 images are byte-identical."""
    sample_images(pipe, str(tmp_path), batch_size=batch_size, **SETTINGS)
    assert all(np.array_equal(a, b) for a, b in zip(read(tmp_path), read(reference[0])))
    assert not (tmp_path / "images").exists()  # npz only by default


def test_same_set_with_one_and_two_processes(pipe, tmp_path):
    """Both runs through the real command in fresh processes (this test process may carry global state from other
    tests, such as an attention backend made active by ``set_attention_backend``)."""
    pipe.save_pretrained(tmp_path / "pipe")
    command = ["-m", "epg_diffusers.cli", "sample", str(tmp_path / "pipe"), "--save", "both", *FLAGS]
    subprocess.run([sys.executable, *command, "--output-dir", str(tmp_path / "one"), "--batch-size", "3"],
                   check=True, capture_output=True, timeout=300, cwd=ROOT)
    subprocess.run([*LAUNCH, *command, "--output-dir", str(tmp_path / "two"), "--batch-size", "2"],
                   check=True, capture_output=True, timeout=300, cwd=ROOT)
    assert all(np.array_equal(a, b) for a, b in zip(read(tmp_path / "one"), read(tmp_path / "two")))
    settings = json.loads((tmp_path / "two" / "settings.json").read_text())
    assert settings["num_processes"] == 2 and settings["model"] == str(tmp_path / "pipe")
    assert settings["command"].startswith(f"epg sample {tmp_path / 'pipe'} --batch-size 2")
    assert sorted(p.name for p in (tmp_path / "two" / "images").iterdir()) == [f"{i:06d}.png" for i in range(10)]


def interrupt_after(monkeypatch, batches: int):
    """Make the sampler raise KeyboardInterrupt after ``batches`` batches, as a killed job would stop."""
    calls, real = [], sample_command.sample_batch

    def sample_batch(*args, **kwargs):
        if len(calls) == batches:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(sample_command, "sample_batch", sample_batch)


def test_interrupted_run_resumes_to_the_same_set(pipe, reference, tmp_path, monkeypatch):
    interrupt_after(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        sample_images(pipe, str(tmp_path), batch_size=3, save="both", **SETTINGS)
    assert [p.name for p in sorted((tmp_path / "parts").iterdir())] == ["part-000000000.npz", "part-000000003.npz"]
    assert not (tmp_path / "samples.npz").exists()
    assert json.loads((tmp_path / "settings.json").read_text())["status"] == "running"
    (tmp_path / "parts" / "part-000000007.npz.tmp").write_bytes(b"half-written")  # killed while saving a part
    monkeypatch.undo()

    settings = sample_images(pipe, str(tmp_path), batch_size=2, save="both", **SETTINGS)  # another batch size
    assert settings["status"] == "complete" and settings["batch_size"] == 2
    assert all(np.array_equal(a, b) for a, b in zip(read(tmp_path), read(reference[0])))
    assert not (tmp_path / "parts").exists()

    interrupt_after(monkeypatch, 0)  # a complete run is not sampled again
    assert sample_images(pipe, str(tmp_path), batch_size=5, save="both", **SETTINGS)["status"] == "complete"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "samples.npz", "settings.json"]


def test_a_truncated_part_is_set_aside_and_sampled_again(pipe, reference, tmp_path, monkeypatch, caplog):
    interrupt_after(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        sample_images(pipe, str(tmp_path), batch_size=3, **SETTINGS)
    monkeypatch.undo()
    part = tmp_path / "parts" / "part-000000003.npz"
    part.write_bytes(part.read_bytes()[:200])  # a part cut short on disk after it was committed
    settings = sample_images(pipe, str(tmp_path), batch_size=3, **SETTINGS)
    assert settings["status"] == "complete"
    assert all(np.array_equal(a, b) for a, b in zip(read(tmp_path), read(reference[0])))
    assert f"{part} is corrupt" in caplog.text and "moved to part-000000003.npz.corrupt" in caplog.text


def test_a_non_finite_batch_stops_the_run_and_keeps_what_was_committed(tmp_path):
    bad = tiny_pipeline()
    real = bad.transformer.forward

    def nan_for_class_7(hidden_states, timestep, class_labels, return_dict=True):  # one class's images go bad
        out = real(hidden_states, timestep, class_labels, return_dict=False)[0]
        out[class_labels == 7] = float("nan")
        return (out,)

    bad.transformer.forward = nan_for_class_7
    with pytest.raises(NonFiniteSampleError, match=r"images \[6, 7, 8\] \(seeds \[6, 7, 8\]\) came out non-finite; "
                                                   r"nothing of this batch was written"):
        sample_images(bad, str(tmp_path), batch_size=3, **SETTINGS)
    assert [p.name for p in sorted((tmp_path / "parts").iterdir())] == ["part-000000000.npz", "part-000000003.npz"]


def test_resuming_with_other_settings_is_refused(pipe, tmp_path, monkeypatch):
    interrupt_after(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        sample_images(pipe, str(tmp_path), batch_size=3, **SETTINGS)
    with pytest.raises(ValueError, match=r"`output_dir`=.*other settings \(seed: 0 -> 1\)"):
        sample_images(pipe, str(tmp_path), batch_size=3, seed=1, **SETTINGS)


def test_settings_leave_out_diffusers_bookkeeping(pipe, tmp_path, monkeypatch):
    """``_use_default_values`` lists names in set order, which differs between processes (hash seeds), so it is not
    a setting: neither stored nor compared (two-process runs of a scheduler built in code refused themselves)."""
    assert len(pipe.scheduler.config.get("_use_default_values", [])) > 1  # the case: several names, in set order
    interrupt_after(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        sample_images(pipe, str(tmp_path), batch_size=3, **SETTINGS)
    path = tmp_path / "settings.json"
    stored = json.loads(path.read_text())
    assert not any(k.startswith("_") for k in stored["scheduler_config"])
    stored["scheduler_config"]["_use_default_values"] = ["rho", "sigma_max"]  # as earlier versions stored it
    path.write_text(json.dumps(stored))
    monkeypatch.undo()
    assert sample_images(pipe, str(tmp_path), batch_size=3, **SETTINGS)["status"] == "complete"


def run_sample(*argv):
    parser = argparse.ArgumentParser()
    sample_command.add_arguments(parser)
    return sample_command.run(parser.parse_args([str(a) for a in argv]))


def test_bad_input_is_refused_clearly(pipe, tmp_path):
    with pytest.raises(ValueError, match="cannot load `pipeline`="):
        run_sample(tmp_path / "missing" / "pipe", "--output-dir", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="`pipeline`=.*without model_index.json"):
        run_sample(tmp_path / "empty", "--output-dir", tmp_path / "out")
    with pytest.raises(ValueError, match="`num_samples`=15 is not a multiple of the 10 classes"):
        sample_images(pipe, str(tmp_path / "out"), **{**SETTINGS, "num_samples": 15})
    (tmp_path / "file").write_text("a file, not a folder")
    with pytest.raises(ValueError, match="`output_dir`=.* is not writable"):
        sample_images(pipe, str(tmp_path / "file" / "out"), **SETTINGS)
    with pytest.raises(ValueError, match="`batch_size`=0"):
        sample_images(pipe, str(tmp_path / "out"), batch_size=0, **SETTINGS)
    with pytest.raises(ValueError, match="`labels` must be one of"):
        sample_images(pipe, str(tmp_path / "out"), labels="uniform", **SETTINGS)
    assert not (tmp_path / "out").exists()  # nothing was written by a refused run
