"""Evaluation: known answers of the metric math, ADM npz I/O, evaluation with injected feature extractors (no
network), the offline small-data metrics and publishing samples (mocked Hub)."""

import argparse
import json
from unittest import mock

import huggingface_hub
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from epg_diffusers.evaluation import (
    NpzImageReader,
    compute_features,
    evaluate_samples,
    feature_statistics,
    frechet_distance,
    inception_score,
    manifold_radii,
    precision_recall,
    push_samples,
    read_reference,
    small_data_metrics,
    write_images_npz,
)
from epg_diffusers.evaluation import evaluate as evaluate_command
from epg_diffusers.evaluation.inception import InceptionV3Features
from epg_diffusers.training.data import load_image_dataset


class FakeExtractor:
    """Deterministic stand-in for Inception: fixed random projections of 4 x 4 average-pooled pixels."""

    name = "fake"

    def __init__(self, dims=(8, 6, 5), seed=0):
        generator = torch.Generator().manual_seed(seed)
        keys = ("pool", "spatial", "logits")
        self.weights = {key: torch.randn(48, d, generator=generator) for key, d in zip(keys, dims)}

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = F.adaptive_avg_pool2d(images.float() / 255, 4).flatten(1)  # B 48
        return {key: x @ w for key, w in self.weights.items()}


def random_images(n, size=16, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def save_npz(path, images, **extra):
    np.savez(path, arr_0=images, **extra)
    return str(path)


# ---------------------------------------------------------------- metric math, known answers


def test_frechet_distance_of_a_set_with_itself_is_zero():
    features = np.random.default_rng(0).normal(size=(500, 8))
    assert abs(frechet_distance(*feature_statistics(features), *feature_statistics(features))) < 1e-8


def test_frechet_distance_of_two_gaussians_is_the_analytic_value():
    # diagonal: |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2 = (1 + 4) + (1 - 2)^2 + (2 - 3)^2 = 7
    assert frechet_distance([0, 0], np.diag([1, 4]), [1, 2], np.diag([4, 9])) == pytest.approx(7.0, abs=1e-9)
    # a shared rotation keeps the covariances commuting: the trace term is still sum (sqrt(a) - sqrt(b))^2
    rotation, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(3, 3)))
    a, b = np.array([1.0, 2.0, 5.0]), np.array([3.0, 0.5, 5.0])
    expected = 1.0 + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    value = frechet_distance(np.zeros(3), rotation @ np.diag(a) @ rotation.T, np.eye(3)[0],
                             rotation @ np.diag(b) @ rotation.T)
    assert value == pytest.approx(expected, abs=1e-8)
    # features drawn from two 1-D Gaussians, standardised to exact moments: (m1 - m2)^2 + (s1 - s2)^2 = 4 + 1
    z = np.random.default_rng(2).normal(size=(1000, 2))
    z = (z - z.mean(0)) / z.std(0, ddof=1)
    x, y = z[:, :1], 2 + 2 * z[:, 1:]
    assert frechet_distance(*feature_statistics(x), *feature_statistics(y)) == pytest.approx(5.0, abs=1e-9)


def test_inception_score_of_uniform_and_one_hot_predictions():
    assert inception_score(np.full((100, 10), 0.1)) == pytest.approx(1.0)
    one_hot = np.eye(10)[np.arange(100) % 10]
    assert inception_score(one_hot) == pytest.approx(10.0)  # confident and diverse: the number of classes
    assert inception_score(np.eye(10)[np.zeros(100, dtype=int)]) == pytest.approx(1.0)  # confident, one class
    halves = np.eye(10)[np.r_[np.arange(10) % 5, 5 + np.arange(10) % 5]]  # splits of 10 see 5 classes each
    assert inception_score(halves, split_size=10) == pytest.approx(5.0)
    assert inception_score(halves, split_size=20) == pytest.approx(10.0)


def line(values) -> np.ndarray:
    """Points on the x axis of the plane."""
    return np.stack([np.asarray(values, float), np.zeros(len(values))], axis=1)


def test_precision_recall_on_constructed_manifolds():
    reference = line(range(10))
    # 3rd nearest neighbour of 0..9: 3 away at the ends, 2 inside (squared radii)
    assert manifold_radii(reference).tolist() == [9, 4, 4, 4, 4, 4, 4, 4, 4, 9]
    assert manifold_radii(reference, batch_size=3).tolist() == [9, 4, 4, 4, 4, 4, 4, 4, 4, 9]  # blocks 3, 3, 3, 1
    samples = line([0.5, 1.5, 2.5, 3.5, 100, 101, 102, 103])
    precision, recall = precision_recall(reference, samples)
    assert precision == pytest.approx(4 / 8)  # the four samples near the line lie inside its balls
    assert recall == pytest.approx(7 / 10)  # their balls (radii 3, 2, 2, 3) reach 0..6
    assert precision_recall(reference, reference) == (1.0, 1.0)
    assert precision_recall(reference, reference + 50) == (0.0, 0.0)
    assert precision_recall(reference, samples, batch_size=3) == (precision, recall)  # blocking changes nothing


# ---------------------------------------------------------------- npz I/O and format checks


def test_streamed_npz_matches_numpy_and_reads_back_in_batches(tmp_path):
    images, labels = random_images(10), np.arange(10) % 3
    write_images_npz(str(tmp_path / "s.npz"), images.shape, (images[i : i + 4] for i in range(0, 10, 4)), labels)
    with np.load(tmp_path / "s.npz") as data:
        assert np.array_equal(data["arr_0"], images) and np.array_equal(data["arr_1"], labels)
    reader = NpzImageReader(str(tmp_path / "s.npz"))
    assert len(reader) == 10 and np.array_equal(np.concatenate(list(reader.batches(3))), images)
    with pytest.raises(ValueError, match="wrote 4 images"):
        write_images_npz(str(tmp_path / "t.npz"), images.shape, [images[:4]])
    assert not (tmp_path / "t.npz").exists()


@pytest.mark.parametrize(
    "array, message",
    [
        (np.zeros((4, 16, 16, 3), np.float32), "uint8"),
        (np.zeros((4, 3, 16, 16), np.uint8), "channels first"),
        (np.zeros((16, 16, 3), np.uint8), r"\(N, H, W, 3\)"),
        (np.zeros((0, 16, 16, 3), np.uint8), "no images"),
    ],
)
def test_sample_npz_of_the_wrong_shape_or_dtype_is_refused(tmp_path, array, message):
    with pytest.raises(ValueError, match=f"`sample_npz`.*{message}"):
        evaluate_samples(save_npz(tmp_path / "bad.npz", array), save_npz(tmp_path / "ref.npz", random_images(8)),
                         FakeExtractor())


def test_missing_or_malformed_files_are_refused(tmp_path):
    ref = save_npz(tmp_path / "ref.npz", random_images(8))
    with pytest.raises(ValueError, match="`sample_npz`.*does not exist"):
        evaluate_samples(str(tmp_path / "nope.npz"), ref, FakeExtractor())
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(ValueError, match="`sample_npz`.*not an .npz"):
        evaluate_samples(str(tmp_path / "text.npz"), ref, FakeExtractor())
    np.savez(tmp_path / "other.npz", images=random_images(8))
    with pytest.raises(ValueError, match="`ref_npz`.*neither images"):
        read_reference(str(tmp_path / "other.npz"))


# ---------------------------------------------------------------- evaluation with an injected extractor


def test_a_set_against_itself_gives_zero_distances_and_full_precision_recall(tmp_path):
    path = save_npz(tmp_path / "s.npz", random_images(64))
    metrics = evaluate_samples(path, path, FakeExtractor(), batch_size=10)
    assert abs(metrics["fid"]) < 1e-6 and abs(metrics["sfid"]) < 1e-6
    assert metrics["precision"] == 1.0 and metrics["recall"] == 1.0
    assert metrics["inception_score"] >= 1.0 and metrics["num_samples"] == 64 and metrics["feature_extractor"] == "fake"


def test_reference_statistics_are_used_as_adm_does(tmp_path):
    images, other = random_images(64), random_images(64, seed=1) // 2  # darker: a different distribution
    extractor = FakeExtractor()
    features = compute_features([images], extractor)
    (mu, sigma), (mu_s, sigma_s) = feature_statistics(features["pool"]), feature_statistics(features["spatial"])
    stats_only = str(tmp_path / "stats.npz")
    np.savez(stats_only, mu=mu, sigma=sigma, mu_s=mu_s, sigma_s=sigma_s)
    same = evaluate_samples(save_npz(tmp_path / "s.npz", images), stats_only, extractor)
    assert abs(same["fid"]) < 1e-6 and same["precision"] is None and same["recall"] is None
    # statistics win over the images when both are present (ADM reads mu / sigma when the file has them)
    both = save_npz(tmp_path / "both.npz", other, mu=mu, sigma=sigma, mu_s=mu_s, sigma_s=sigma_s)
    metrics = evaluate_samples(str(tmp_path / "s.npz"), both, extractor)
    assert abs(metrics["fid"]) < 1e-6 and metrics["precision"] < 1.0
    different = evaluate_samples(save_npz(tmp_path / "o.npz", other), save_npz(tmp_path / "r.npz", images), extractor)
    assert different["fid"] > 0.1 and different["sfid"] > 0.1
    with pytest.raises(ValueError, match="statistics do not match"):
        evaluate_samples(str(tmp_path / "s.npz"), stats_only, FakeExtractor(dims=(4, 6, 5)))


def random_inception_weights(path) -> str:
    """torch-fidelity's Inception network with random weights, saved where a weights file would be (the real
    weights cannot be downloaded here)."""
    from torch_fidelity import feature_extractor_inceptionv3 as tf_inception

    with mock.patch.object(tf_inception.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None), \
            mock.patch.object(tf_inception, "load_state_dict_from_url", return_value={}):
        random_weights = tf_inception.FeatureExtractorInceptionV3("x", ["2048"]).state_dict()
    torch.save(random_weights, path)
    return str(path)


def test_inception_wrapper_returns_adm_features(tmp_path):
    """torch-fidelity's network with random weights: the wrapper's feature shapes are ADM's: pool_3 2048,
    mixed_6/conv 17 x 17 x 7 = 2023, 1008 logits."""
    extractor = InceptionV3Features(random_inception_weights(tmp_path / "inception.pth"))
    out = extractor(torch.from_numpy(random_images(2)).permute(0, 3, 1, 2))
    assert out["pool"].shape == (2, 2048) and out["spatial"].shape == (2, 2023) and out["logits"].shape == (2, 1008)
    with pytest.raises(ValueError, match="`inception_weights`"):
        InceptionV3Features(str(tmp_path / "missing.pth"))


# ---------------------------------------------------------------- small-data mode and the command


@pytest.fixture(scope="module")
def real_digits():
    dataset = load_image_dataset("digits", resolution=16)
    return np.stack([np.asarray(image.convert("RGB")) for image in dataset["image"]]), np.asarray(dataset["label"])


def test_small_data_metrics_separate_real_digits_from_noise(real_digits):
    images, labels = real_digits
    real = small_data_metrics(images[:400], labels[:400], resolution=16)
    assert real["classifier_accuracy"] > 0.9 and real["frechet_distance"] < 5
    assert 0.9 < real["real_holdout_accuracy"] <= 1.0 and real["real_holdout_frechet_distance"] < 5
    assert small_data_metrics(images[:400], (labels[:400] + 1) % 10, resolution=16)["classifier_accuracy"] < 0.1
    noise = small_data_metrics(random_images(400), labels[:400], resolution=16)
    assert noise["frechet_distance"] > 20 * real["frechet_distance"] and noise["classifier_accuracy"] < 0.3
    assert small_data_metrics(images[:400], labels[:400], resolution=16) == real  # deterministic
    with pytest.raises(ValueError, match="`labels`"):
        small_data_metrics(images[:10], labels[:9])


def run_evaluate(*argv):
    parser = argparse.ArgumentParser()
    evaluate_command.add_arguments(parser)
    return evaluate_command.run(parser.parse_args([str(a) for a in argv]))


def test_evaluate_command_small_data_writes_metrics_and_publishes(tmp_path, real_digits, monkeypatch):
    images, labels = real_digits
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "settings.json").write_text(json.dumps({
        "model": "org/epg-digits", "num_samples": 200, "num_classes": 10, "seed": 0, "sampler": "EPGHeunScheduler",
        "num_inference_steps": 32, "num_network_evaluations": 62, "guidance_scale": 1.0, "labels": "balanced",
        "seeds": "image i uses seed 0 + i", "resolution": 16, "dtype": "float32",
        "command": "epg sample org/epg-digits",
    }))
    npz = save_npz(folder / "samples.npz", images[:200], arr_1=labels[:200])
    api = mock.MagicMock()
    api.create_repo.return_value = mock.Mock(repo_id="org/samples")
    monkeypatch.setattr(huggingface_hub, "HfApi", mock.Mock(return_value=api))
    assert run_evaluate("--small-data", "digits", npz, "--push-to-hub", "org/samples") == 0
    metrics = json.loads((folder / "samples.metrics.json").read_text())
    assert metrics["classifier_accuracy"] > 0.9 and metrics["command"] == f"epg evaluate {npz} --small-data digits"

    api.create_repo.assert_called_once_with("org/samples", repo_type="dataset", private=None, exist_ok=True)
    operations = api.create_commit.call_args.kwargs["operations"]
    files = {"samples.npz", "settings.json", "samples.metrics.json", "README.md"}
    assert {op.path_in_repo for op in operations} == files
    card = next(op.path_or_fileobj for op in operations if op.path_in_repo == "README.md").decode()
    assert card.startswith("---\ntask_categories:") and "size_categories:\n- n<1K" in card
    assert 'hf_hub_download("org/samples", "samples.npz", repo_type="dataset")' in card
    assert "| Classifier accuracy |" in card and "never with published FIDs" in card
    assert "epg sample org/epg-digits" in card and f"epg evaluate {npz} --small-data digits" in card
    assert "| network evaluations per image | 62 |" in card and "| guidance | off |" in card


def test_evaluate_command_input_errors(tmp_path):
    npz = save_npz(tmp_path / "s.npz", random_images(4))
    with pytest.raises(ValueError, match="REF_NPZ SAMPLE_NPZ"):
        run_evaluate(npz)
    with pytest.raises(ValueError, match="no class labels"):
        run_evaluate("--small-data", "digits", npz)
    with pytest.raises(ValueError, match="`sample_npz`"):
        push_samples(str(tmp_path / "missing.npz"), "org/x")
