"""What EPGPipeline checks and converts on the way in: sampling settings, guidance modes, image-to-image images."""

import math
import numbers

import numpy as np
import PIL.Image
import torch


class NonFiniteSampleError(ValueError):
    """Sampling produced NaN or inf: raised instead of returning black images."""


def check_sampling(num_inference_steps, guidance_scale, guidance_interval, prefix: str = "") -> None:
    """Refuse steps, guidance scales and intervals the sampler cannot use, naming the argument (``prefix`` + name)."""
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
        raise ValueError(f"`{prefix}num_inference_steps` must be an integer >= 1, got {num_inference_steps!r}.")
    check_scale(guidance_scale, f"{prefix}guidance_scale")
    if guidance_interval is not None:
        values = list(guidance_interval) if isinstance(guidance_interval, (list, tuple)) else []
        if len(values) != 2 or not all(isinstance(v, numbers.Real) for v in values) or not 0 <= values[0] < values[1]:
            raise ValueError(
                f"`{prefix}guidance_interval` must be (low, high) with 0 <= low < high, got {guidance_interval}.")


def check_scale(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
        raise ValueError(f"`{name}` must be a finite number >= 0, got {value!r}.")


def check_strength(strength) -> float:
    """Image-to-image strength in [0, 1]: the share of the sampling schedule run from the noised image."""
    if isinstance(strength, bool) or not isinstance(strength, numbers.Real) or not 0 <= strength <= 1:
        raise ValueError(f"`strength` must be a number in [0, 1], got {strength!r}.")
    return float(strength)


def image_tensor(image, size: int, channels: int) -> torch.Tensor:
    """(N, C, size, size) float32 in [0, 1] from a PIL image, a list of them, a uint8 / [0, 1] array or a tensor."""
    images = image if isinstance(image, list) else [image]
    if not images:
        raise ValueError("`image` is an empty list.")
    out = []
    for item in images:
        if isinstance(item, PIL.Image.Image):
            if item.mode != "RGB":
                raise ValueError(f"`image` must be an RGB image, got mode {item.mode!r} (use image.convert('RGB')).")
            item = torch.from_numpy(np.asarray(item, dtype=np.float32) / 255).permute(2, 0, 1)
        elif isinstance(item, np.ndarray):
            array = item.astype(np.float32) / 255 if item.dtype == np.uint8 else item.astype(np.float32)
            item = torch.from_numpy(array).permute(*((2, 0, 1) if array.ndim == 3 else (0, 3, 1, 2)))  # HWC, NHWC
        elif not isinstance(item, torch.Tensor):
            raise ValueError(f"`image` must be PIL images, a numpy array or a tensor, got {type(item).__name__}.")
        out.append(item.float().reshape(-1, *item.shape[-3:]))
    batch = torch.cat(out)
    if tuple(batch.shape[1:]) != (channels, size, size):
        raise ValueError(f"`image` must be {size} x {size} pixels with {channels} channels (the model's sample_size), "
                         f"got {tuple(batch.shape[1:])} as (channels, height, width).")
    if not torch.isfinite(batch).all() or batch.min() < 0 or batch.max() > 1:
        raise ValueError("`image` values must lie in [0, 1] (or be uint8).")
    return batch
