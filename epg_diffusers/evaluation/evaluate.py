"""``epg evaluate``: FID, sFID, Inception Score and precision / recall of a sample npz against an ADM reference
batch, computed as ADM's evaluator computes them; or, with ``--small-data digits``, the offline small-data
metrics. Results are printed and written next to the samples as ``<samples>.metrics.json``.

    epg evaluate VIRTUAL_imagenet256_labeled.npz samples/samples.npz
    epg evaluate --small-data digits samples/samples.npz
"""

import argparse
import json
import os
import shlex
import tempfile

import numpy as np
import torch

from ..cli import positive_int
from .inception import FeatureExtractor, InceptionV3Features, compute_features
from .metrics import feature_statistics, frechet_distance, inception_score, precision_recall
from .npz import NpzImageReader, read_labels, read_reference
from .small_data import DATASETS, small_data_metrics


def reference_features(ref, extractor: FeatureExtractor, batch_size: int) -> tuple[dict, dict | None]:
    """(pool / spatial statistics, features or None) of a reference batch; precomputed statistics win, as in ADM."""
    features = None
    if ref.images is not None:
        features = compute_features(ref.images.batches(batch_size), extractor, len(ref.images), "reference")
    if ref.statistics is not None:
        stats = {"pool": (ref.statistics["mu"], ref.statistics["sigma"]),
                 "spatial": (ref.statistics["mu_s"], ref.statistics["sigma_s"])}
    else:
        stats = {key: feature_statistics(features[key]) for key in ("pool", "spatial")}
    return stats, features


def evaluate_samples(
    sample_npz: str, ref_npz: str, extractor: FeatureExtractor | None = None, batch_size: int = 64
) -> dict:
    """ADM's metrics of ``sample_npz`` against the reference batch ``ref_npz``.

    Args:
        sample_npz: uint8 (N, H, W, 3) images as ``arr_0`` (what ``epg sample`` writes).
        ref_npz: an ADM reference batch: images (``arr_0``) and/or statistics (``mu``, ``sigma``, ``mu_s``,
            ``sigma_s``). Precision and recall need its images; with statistics only they are None.
        extractor: the feature extractor (see :mod:`epg_diffusers.evaluation.inception`); defaults to
            :class:`InceptionV3Features` on the GPU when there is one.
        batch_size: images per extractor call.

    Returns:
        `dict`: ``fid``, ``sfid``, ``inception_score``, ``precision``, ``recall``, the set sizes and the extractor.
    """
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1, got {batch_size}.")
    samples = NpzImageReader(sample_npz, "sample_npz")
    ref = read_reference(ref_npz, "ref_npz")
    if extractor is None:
        extractor = InceptionV3Features(device="cuda" if torch.cuda.is_available() else "cpu")
    ref_stats, ref_features = reference_features(ref, extractor, batch_size)
    features = compute_features(samples.batches(batch_size), extractor, len(samples), "samples")
    metrics = {
        "fid": frechet_distance(*feature_statistics(features["pool"]), *ref_stats["pool"]),
        "sfid": frechet_distance(*feature_statistics(features["spatial"]), *ref_stats["spatial"]),
        "inception_score": inception_score(features["probs"]),
        "precision": None,
        "recall": None,
    }
    if ref_features is not None:
        metrics["precision"], metrics["recall"] = precision_recall(ref_features["pool"], features["pool"])
    return {
        **metrics,
        "num_samples": len(samples),
        "num_reference": len(ref.images) if ref.images is not None else None,
        "sample_resolution": list(samples.shape[1:3]),
        "feature_extractor": getattr(extractor, "name", type(extractor).__name__),
    }


def evaluate_small_data(sample_npz: str, dataset: str = "digits", resolution: int | None = None) -> dict:
    """:func:`small_data_metrics` of an npz written by ``epg sample`` (its ``arr_1`` holds the requested classes)."""
    reader = NpzImageReader(sample_npz, "sample_npz")
    labels = read_labels(sample_npz, "sample_npz")
    if labels is None:
        raise ValueError(f"`sample_npz`={sample_npz!r} has no class labels (arr_1), which --small-data needs.")
    images = np.concatenate(list(reader.batches(4096)))
    return small_data_metrics(images, labels, resolution=resolution, dataset=dataset)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``epg evaluate``."""
    parser.add_argument("npz", nargs="+", metavar="NPZ",
                        help="REF_NPZ SAMPLE_NPZ (ADM reference batch, then samples), or SAMPLE_NPZ with --small-data")
    parser.add_argument("--small-data", choices=DATASETS, default=None,
                        help="offline small-data metrics against this data set instead of ADM's metrics")
    parser.add_argument("--resolution", type=positive_int, default=None,
                        help="--small-data: px of the real images (default: the samples')")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="images per Inception forward")
    parser.add_argument("--inception-weights", default=None,
                        help="torch-fidelity's weights-inception-2015-12-05-6726825d.pth (else downloaded once)")
    parser.add_argument("--device", default=None, help="device of the Inception network (default: cuda if available)")
    parser.add_argument("--output", default=None, help="metrics JSON path (default: <samples>.metrics.json)")
    parser.add_argument("--push-to-hub", default=None, metavar="REPO_ID",
                        help="publish the samples, their settings and these metrics as a Hub data set")
    parser.add_argument("--private", action="store_true", help="with --push-to-hub: create the data set private")


def command_line(args: argparse.Namespace) -> str:
    """The ``epg evaluate`` command that reproduces ``args`` (for the metrics file and the data set card)."""
    parts = ["epg", "evaluate", *args.npz]
    for key in ("small_data", "resolution") if args.small_data else ("batch_size", "inception_weights"):
        if getattr(args, key) is not None:
            parts += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    return shlex.join(parts)


def check_writable(output: str) -> None:
    """Refuse an ``--output`` that cannot be written before any metric is computed."""
    if os.path.isdir(output):
        raise ValueError(f"`output`={output!r} is a folder; name the metrics JSON file to write.")
    try:
        with tempfile.NamedTemporaryFile(dir=os.path.dirname(os.path.abspath(output))):
            pass
    except OSError as error:
        raise ValueError(f"`output`={output!r} is not writable: {error}") from error


def run(args: argparse.Namespace) -> int:
    """Evaluate, print, write the metrics JSON and optionally publish."""
    expected = 1 if args.small_data else 2
    if len(args.npz) != expected:
        usage = "SAMPLE_NPZ with --small-data" if args.small_data else "REF_NPZ SAMPLE_NPZ"
        raise ValueError(f"`npz` takes {usage}, got {len(args.npz)} path(s): {args.npz}.")
    sample_npz = args.npz[-1]
    for path, name in zip(args.npz[::-1], ("sample_npz", "ref_npz")):  # before any network is loaded or downloaded
        if not os.path.isfile(path):
            what = "is a folder, not an npz file" if os.path.isdir(path) else "does not exist"
            raise ValueError(f"`{name}`={path!r} {what}.")
    output = args.output or f"{sample_npz.removesuffix('.npz')}.metrics.json"
    check_writable(output)
    if args.small_data:
        metrics = evaluate_small_data(sample_npz, args.small_data, args.resolution)
    else:
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        extractor = InceptionV3Features(args.inception_weights, device=device)
        metrics = evaluate_samples(sample_npz, args.npz[0], extractor, args.batch_size)
        metrics["reference"] = os.path.basename(args.npz[0])
    metrics["command"] = command_line(args)
    with open(output, "w") as f:
        json.dump(metrics, f, indent=2)
    for key, value in metrics.items():
        print(f"{key}: {value}")
    print(f"wrote {output}")
    if args.push_to_hub:
        from .publish import push_samples

        info = push_samples(sample_npz, args.push_to_hub, metrics_json=output, private=args.private or None)
        print(f"published to {getattr(info, 'commit_url', args.push_to_hub)}")
    return 0
