"""Evaluation: sampling at scale (``epg sample``), ADM's metrics (``epg evaluate``), the offline small-data
metrics, npz I/O in ADM's format, class-balanced labels and publishing samples to the Hub.

Names are imported from their modules when first used, so that ``epg sample`` and ``epg evaluate --help`` run
without the [eval] extra (scipy, torch-fidelity, scikit-learn), which only computing metrics needs.
"""

import importlib

_MODULES = {
    "evaluate": ["evaluate_samples", "evaluate_small_data"],
    "inception": ["InceptionV3Features", "compute_features"],
    "labels": ["balanced_labels", "random_labels", "sample_labels"],
    "metrics": ["feature_statistics", "frechet_distance", "inception_score", "manifold_radii", "precision_recall"],
    "npz": ["NpzImageReader", "read_labels", "read_reference", "write_images_npz"],
    "publish": ["push_samples", "samples_card"],
    "sample": ["sample_images"],
    "small_data": ["small_data_metrics"],
}
_WHERE = {name: module for module, names in _MODULES.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
