"""Every random stream of training, by name: the one place that turns (run seed, stream, coordinates) into a seed.

A draw depends only on the run's ``--seed``, the stream's name and its coordinates (step, process, micro-step;
or epoch and image index), never on how many processes or workers run or whether the run was resumed, so a
resumed run draws exactly what the uninterrupted run drew. Seeds come from numpy's ``SeedSequence`` hash of the
tuple (run seed, stream id, coordinates): distinct tuples give unrelated 63-bit seeds, with none of the
arithmetic offsets that meet once there are enough processes, micro-steps or images (e.g. process 10's first
micro-step and process 0's second, or image i + 1,000,033 of one epoch and image i of the next).

The data order is the one stream owned elsewhere: accelerate's seedable sampler shuffles with (seed, epoch).
"""

import numpy as np
import torch

# name: (id, the coordinates a seed of this stream is drawn for)
STREAMS: dict[str, tuple[int, tuple[str, ...]]] = {
    # pre-training: the grid index n of a step, one for the whole global batch, identical on every process
    "grid_index": (1, ("step",)),
    # the noise eps (and, in fine-tuning, sigma and the label-dropout mask) of one process's micro-batch
    "noise": (2, ("step", "process", "micro_step")),
    # torch's global RNG during one micro-batch: dropout inside the networks and any other global draw
    "global_rng": (3, ("step", "process", "micro_step")),
    # the augmentations of one image in one epoch (MoCo views, crops, flips)
    "augmentation": (4, ("epoch", "index")),
}


def stream_seed(seed: int, stream: str, **coordinates: int) -> int:
    """The seed of ``stream`` at ``coordinates`` (exactly the names in ``STREAMS[stream]``) for run seed ``seed``."""
    if stream not in STREAMS:
        raise ValueError(f"unknown random stream {stream!r}; streams: {', '.join(STREAMS)}.")
    stream_id, names = STREAMS[stream]
    if set(coordinates) != set(names):
        raise ValueError(f"stream {stream!r} is drawn for {names}, got {tuple(coordinates)}.")
    values = [seed, *(coordinates[name] for name in names)]
    if any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0 for v in values):
        raise ValueError(f"the seed and the coordinates of stream {stream!r} must be integers >= 0, got "
                         f"seed={seed!r}, {coordinates}.")
    state = np.random.SeedSequence([int(seed), stream_id, *(int(coordinates[name]) for name in names)])
    return int(state.generate_state(1, dtype=np.uint64)[0]) >> 1  # a non-negative int64


def stream_generator(seed: int, stream: str, device="cpu", **coordinates: int) -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with :func:`stream_seed`."""
    return torch.Generator(device).manual_seed(stream_seed(seed, stream, **coordinates))
