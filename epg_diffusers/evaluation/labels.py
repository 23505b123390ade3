"""Class labels of a sample set, fixed by the image's global index (never by process or batch)."""

import numpy as np

LABEL_MODES = ("balanced", "random")


def balanced_labels(num_samples: int, num_classes: int) -> np.ndarray:
    """The paper's protocol: every class ``num_samples / num_classes`` times, in contiguous runs (0, 0, ..., 1, 1, ...).

    ``num_samples`` must be a multiple of ``num_classes`` (50,000 for ImageNet's 1000 classes gives 50 each).
    """
    if num_samples < 1 or num_classes < 1:
        raise ValueError(f"`num_samples`={num_samples} and `num_classes`={num_classes} must be >= 1.")
    if num_samples % num_classes:
        low = num_samples // num_classes * num_classes
        raise ValueError(
            f"`num_samples`={num_samples} is not a multiple of the {num_classes} classes: balanced labels give every "
            f"class num_samples / num_classes images. Use {low or num_classes} or {low + num_classes}, "
            "or random labels."
        )
    return np.repeat(np.arange(num_classes, dtype=np.int64), num_samples // num_classes)


def random_labels(num_samples: int, num_classes: int, seed: int) -> np.ndarray:
    """Uniformly random classes from ``numpy.random.default_rng(seed)``, one per image index."""
    if num_samples < 1 or num_classes < 1:
        raise ValueError(f"`num_samples`={num_samples} and `num_classes`={num_classes} must be >= 1.")
    return np.random.default_rng(seed).integers(0, num_classes, size=num_samples, dtype=np.int64)


def sample_labels(mode: str, num_samples: int, num_classes: int, seed: int = 0) -> np.ndarray:
    """The label of every image index for ``mode`` "balanced" or "random"."""
    if mode == "balanced":
        return balanced_labels(num_samples, num_classes)
    if mode == "random":
        return random_labels(num_samples, num_classes, seed)
    raise ValueError(f"`labels` must be one of {LABEL_MODES}, got {mode!r}.")
