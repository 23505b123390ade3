"""Small-data metrics for the offline digits set (``load_image_dataset("digits")``), with no download.

The feature space is a classifier trained in about a second on the real digits themselves:

1. every image, real or generated, is turned back into the set's native form: grayscale, area-averaged to
   8 x 8 and inverted to ink intensity in [0, 1] (the data set draws dark digits on white);
2. a one-hidden-layer MLP (64 ReLU units, scikit-learn, L-BFGS, ``random_state=0``) is trained on a fixed
   stratified 80% of the real digits; the other 20% is held out;
3. **Fréchet distance**: between the 64 hidden activations of the generated images and of the real training
   split (the same formula as FID); **classifier accuracy**: the share of generated images the MLP assigns
   to the class they were requested with.

Two real-data references come with every result: the held-out split's Fréchet distance to the training
split (a floor at n = 360 images; the distance is biased upwards for small n) and its accuracy (a ceiling).
Everything is deterministic, so numbers from different runs and machines with the same libraries compare.
"""

import dataclasses
import functools
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from .metrics import feature_statistics, frechet_distance
from .npz import check_images

DATASETS = ("digits",)
NATIVE_SIZE, NUM_CLASSES, HIDDEN, SEED = 8, 10, 64, 0


def digit_pixels(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, 3) images -> (N, 64) ink intensities in [0, 1] at the digits' native 8 x 8."""
    gray = torch.from_numpy(np.asarray(images, dtype=np.float32)).mean(dim=-1)[:, None]  # N 1 H W
    small = F.adaptive_avg_pool2d(gray, NATIVE_SIZE)  # N 1 8 8, area average
    return (1.0 - small / 255.0).reshape(len(images), -1).numpy()  # ink: 1 = dark


def _hidden(classifier, pixels: np.ndarray, active) -> np.ndarray:
    hidden = np.maximum(pixels @ classifier.coefs_[0] + classifier.intercepts_[0], 0.0)  # N 64, ReLU
    return hidden[:, active]  # units that never fire on real digits would make the covariance singular


def _distance(features: np.ndarray, mu: np.ndarray, sigma: np.ndarray) -> float:
    from scipy.linalg import LinAlgWarning  # the [eval] extra, imported when used

    with warnings.catch_warnings():  # a unit silent on this set (or a collapsed generator) makes the covariance
        warnings.simplefilter("ignore", LinAlgWarning)  # singular; the distance stays finite and meaningful
        return frechet_distance(*feature_statistics(features), mu, sigma)


@dataclasses.dataclass(frozen=True)
class DigitsReference:
    """The fitted classifier and the real digits' feature statistics at one resolution."""

    classifier: object
    active: np.ndarray
    mu: np.ndarray
    sigma: np.ndarray
    holdout_frechet_distance: float
    holdout_accuracy: float

    def features(self, pixels: np.ndarray) -> np.ndarray:
        """The MLP's hidden ReLU activations (units active on real digits) of :func:`digit_pixels` output."""
        return _hidden(self.classifier, pixels, self.active)

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        """Predicted classes of :func:`digit_pixels` output."""
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1):
            return self.classifier.predict(pixels)


@functools.lru_cache(maxsize=4)
def digits_reference(resolution: int) -> DigitsReference:
    """Train the digits classifier on real images rendered at ``resolution`` px (cached per resolution)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier
    from threadpoolctl import threadpool_limits

    from ..training.data import load_image_dataset

    dataset = load_image_dataset("digits", resolution=resolution)
    images = np.stack([np.asarray(image.convert("RGB")) for image in dataset["image"]])
    labels = np.asarray(dataset["label"])
    x_train, x_test, y_train, y_test = train_test_split(
        digit_pixels(images), labels, test_size=0.2, stratify=labels, random_state=SEED
    )
    classifier = MLPClassifier(
        hidden_layer_sizes=(HIDDEN,), solver="lbfgs", alpha=1e-3, max_iter=400, random_state=SEED
    )
    # one BLAS thread: ~30x faster than oversubscribed threads for this size, and the same result on any machine
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        classifier.fit(x_train, y_train)
    active = _hidden(classifier, x_train, slice(None)).max(axis=0) > 0
    reference = DigitsReference(classifier, active, *feature_statistics(_hidden(classifier, x_train, active)), 0.0, 0.0)
    return dataclasses.replace(
        reference,
        holdout_frechet_distance=_distance(reference.features(x_test), reference.mu, reference.sigma),
        holdout_accuracy=float((reference.predict(x_test) == y_test).mean()),
    )


def small_data_metrics(
    images: np.ndarray, labels: np.ndarray, resolution: int | None = None, dataset: str = "digits"
) -> dict:
    """Fréchet distance and classifier accuracy of generated digits against the real offline digits set.

    Args:
        images: uint8 (N, H, W, 3) generated images (N >= 2).
        labels: (N,) the class each image was generated for.
        resolution: the px size the real digits are rendered at before the classifier sees them; defaults to
            the images' height (both end up at 8 x 8, so this only matters for resampling detail).
        dataset: the small data set; only ``"digits"``.

    Returns:
        `dict`: ``frechet_distance``, ``classifier_accuracy``, ``num_samples`` and the real-data references
        ``real_holdout_frechet_distance`` and ``real_holdout_accuracy``, plus ``feature_space``.
    """
    if dataset not in DATASETS:
        raise ValueError(f"`dataset` must be one of {DATASETS}, got {dataset!r}.")
    images = np.asarray(images)
    check_images(images.shape, images.dtype, "`images`")
    labels = np.asarray(labels).reshape(-1)
    if len(labels) != len(images):
        raise ValueError(f"`labels` has {len(labels)} entries for {len(images)} images.")
    if len(images) < 2 or labels.min() < 0 or labels.max() >= NUM_CLASSES:
        raise ValueError(f"need >= 2 images with `labels` in [0, {NUM_CLASSES}), got {len(images)} in "
                         f"[{labels.min()}, {labels.max()}].")
    reference = digits_reference(int(resolution or images.shape[1]))
    pixels = digit_pixels(images)
    fd = _distance(reference.features(pixels), reference.mu, reference.sigma)
    return {
        "frechet_distance": fd,
        "classifier_accuracy": float((reference.predict(pixels) == labels).mean()),
        "num_samples": len(images),
        "real_holdout_frechet_distance": reference.holdout_frechet_distance,
        "real_holdout_accuracy": reference.holdout_accuracy,
        "feature_space": f"digits-mlp{HIDDEN}: the {int(reference.active.sum())} active hidden ReLU units of an MLP "
                         f"trained on real 8x8 digits (seed {SEED})",
    }
