"""Evaluation: sampling at scale (``epg sample``), ADM's metrics (``epg evaluate``), the offline small-data
metrics, npz I/O in ADM's format, class-balanced labels and publishing samples to the Hub."""

from .evaluate import evaluate_samples, evaluate_small_data
from .inception import InceptionV3Features, compute_features
from .labels import balanced_labels, random_labels, sample_labels
from .metrics import feature_statistics, frechet_distance, inception_score, manifold_radii, precision_recall
from .npz import NpzImageReader, read_labels, read_reference, write_images_npz
from .publish import push_samples, samples_card
from .sample import sample_images
from .small_data import small_data_metrics

__all__ = [
    "InceptionV3Features",
    "NpzImageReader",
    "balanced_labels",
    "compute_features",
    "evaluate_samples",
    "evaluate_small_data",
    "feature_statistics",
    "frechet_distance",
    "inception_score",
    "manifold_radii",
    "precision_recall",
    "push_samples",
    "random_labels",
    "read_labels",
    "read_reference",
    "sample_images",
    "sample_labels",
    "samples_card",
    "small_data_metrics",
    "write_images_npz",
]
