"""``--streaming``: train from a Hub data set or local parquet / arrow shards without downloading or preprocessing
it first.

The stream is shuffled (shard order and a ``--shuffle_buffer_size`` buffer, seeded by (seed, epoch)), split among
the processes with ``datasets.distributed.split_dataset_by_node`` and among each process's DataLoader workers by
shards (``IterableDataset.shard``), then decoded and augmented on the fly with the same views as map-style data
(the ADM center crop included). An image's augmentation is seeded by (seed, epoch, a hash of its bytes), so it
does not depend on the order, the worker or the process that reads it. Every example is read once per epoch by
one worker of one process.

Epochs: shards rarely hold equal numbers of examples, so the streams of processes and workers differ in length.
A worker whose stream ends sends an end marker; a process stops its epoch at the first marker, and every process
stops at the first optimisation step that one of them cannot fill (:func:`full_steps`: one all-reduce per
step). The examples after that point wait for the next epoch's reshuffle, as a drop-last loader drops a remainder.

Exact resume, the documented equivalent of ``IterableDataset.state_dict`` (which refills the shuffle buffer on
resume and so does not give back the same order): a DataLoader takes its workers' batches in turn, so the epoch's
micro-batch b is batch b // W of worker stream b % W, a function of (seed, epoch, process). A run resumed after k
micro-batches of an epoch gives its worker w the stream (k + w) % W, which skips its first (k + w) // W batches
reading them without decoding; the DataLoader's turns then continue the uninterrupted run's order exactly.
"""

import glob
import hashlib
import itertools
import os

import torch
from accelerate.utils import send_to_device
from datasets import Image, IterableDataset, load_dataset, load_from_disk
from datasets.distributed import split_dataset_by_node

from .data import DIGITS, decode_rgb, digits_dataset
from .seeding import stream_seed

SHARD_SUFFIXES = ("parquet", "arrow")


def load_streaming_dataset(name: str, split: str = "train", image_column: str = "image", label_column: str = "label",
                           resolution: int = 32, num_shards: int = 64) -> IterableDataset:
    """``name`` as an ``IterableDataset`` of (image as raw bytes, label).

    ``name``: a Hub id, a folder of ``.parquet`` / ``.arrow`` shards (searched recursively; files whose path holds
    ``split`` are used when there are such), a ``save_to_disk`` folder, an ``imagefolder`` folder or ``"digits"``
    (the last three cut into ``num_shards`` shards)."""
    try:
        if name == DIGITS:
            dataset = digits_dataset(resolution).to_iterable_dataset(num_shards=num_shards)
        elif os.path.isdir(name) and any(os.path.exists(os.path.join(name, f)) for f in ("dataset_info.json",
                                                                                          "state.json")):
            table = load_from_disk(name)
            table = table[split] if hasattr(table, "keys") else table
            dataset = table.to_iterable_dataset(num_shards=min(num_shards, len(table)))
        elif os.path.isdir(name) and shard_files(name, split):
            files, kind = shard_files(name, split)
            dataset = load_dataset(kind, data_files=files, split="train", streaming=True)
        elif os.path.isdir(name):
            dataset = load_dataset("imagefolder", data_dir=name, split=split, streaming=True)
        else:
            dataset = load_dataset(name, split=split, streaming=True)
    except Exception as error:  # unknown name, no network, missing split, unreadable shards
        raise ValueError(f"cannot stream data set `dataset_name`={name!r} (split {split!r}): {error}") from error
    columns = list(dataset.features or {}) or None
    if columns is not None:
        missing = [c for c in (image_column, label_column) if c not in columns]
        if missing:
            raise ValueError(f"data set {name!r} has no column(s) {missing}; columns: {columns}.")
    renames = {c: n for c, n in ((image_column, "image"), (label_column, "label")) if c != n}
    dataset = dataset.rename_columns(renames) if renames else dataset
    return dataset.select_columns(["image", "label"]).cast_column("image", Image(decode=False))


def shard_files(folder: str, split: str) -> tuple[list[str], str] | None:
    """(sorted shard files, builder name) of a folder of parquet or arrow files, or None."""
    for suffix in SHARD_SUFFIXES:
        files = sorted(glob.glob(os.path.join(folder, "**", f"*.{suffix}"), recursive=True))
        of_split = [f for f in files if split in os.path.relpath(f, folder)]
        if files:
            return of_split or files, suffix
    return None


def class_names(dataset: IterableDataset) -> list[str] | None:
    """The label names when the label column is a ``ClassLabel``."""
    feature = (dataset.features or {}).get("label")
    return list(feature.names) if getattr(feature, "names", None) else None


def image_key(value) -> int:
    """A 62-bit key of an image's bytes (or of its path): what seeds its augmentation in place of an index."""
    data = value.get("bytes") or str(value.get("path")).encode()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") >> 2


END = {"end_of_stream": True}  # what a worker sends when its stream has no full micro-batch left


def is_end(batch) -> bool:
    return isinstance(batch, dict) and batch.get("end_of_stream", False)


def as_is(batch):
    """DataLoader ``collate_fn`` for batches the workers have collated already."""
    return batch


class StreamingImages(torch.utils.data.IterableDataset):
    """One process's share of a streamed data set, for a DataLoader with ``batch_size=None``: collated micro-batches
    of ``batch_size`` decoded, augmented examples (dicts of the ``views`` plus ``label`` and ``broken``, like the
    map-style loader's), in an order fixed by (seed, epoch, process), then :data:`END` from each worker."""

    def __init__(self, dataset: IterableDataset, views: dict, seed: int, batch_size: int, rank: int, world_size: int,
                 buffer_size: int):
        self.dataset = split_dataset_by_node(dataset.shuffle(seed=seed, buffer_size=buffer_size), rank, world_size)
        self.views, self.seed, self.batch_size = views, seed, batch_size
        self.epoch, self.skip_batches = 0, 0

    @property
    def n_shards(self) -> int:
        return self.dataset.n_shards

    def set_epoch(self, epoch: int) -> None:
        """The next iteration reads ``epoch`` from its start (a new shuffle)."""
        self.epoch, self.skip_batches = epoch, 0
        self.dataset.set_epoch(epoch)

    def resume_epoch(self, epoch: int, skip_batches: int) -> None:
        """The next iteration reads ``epoch`` after its first ``skip_batches`` micro-batches."""
        self.set_epoch(epoch)
        self.skip_batches = skip_batches

    def __iter__(self):
        from .data import collate_skipping_broken

        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        stream = (self.skip_batches + worker) % workers  # the stream whose turn this worker's first batch takes
        skip = (self.skip_batches + worker) // workers
        rows = self.dataset
        if workers > 1:
            rows = rows.shard(num_shards=workers, index=stream)
            rows.set_epoch(self.epoch)  # shard() starts a new IterableDataset at epoch 0
        for position, batch in enumerate(rows.iter(batch_size=self.batch_size, drop_last_batch=True)):
            if position < skip:
                continue  # trained on before the checkpoint: read, not decoded
            yield collate_skipping_broken([self.example(image, label) for image, label in zip(batch["image"],
                                                                                                batch["label"])])
        yield END

    def example(self, image_bytes: dict, label: int) -> dict:
        image = decode_rgb(image_bytes)
        if image is None:
            return {"valid": False, "label": label}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(stream_seed(self.seed, "augmentation", epoch=self.epoch, index=image_key(image_bytes)))
            sample = {name: view(image) for name, view in self.views.items()}
        return {**sample, "label": label, "valid": True}


def full_steps(loader, accumulation: int, accelerator):
    """A streamed epoch's micro-batches, one optimisation step at a time, up to the first step that a process
    cannot fill (its workers' streams differ in length): every process stops there (one all-reduce per step)."""
    batches = iter(loader)
    while True:
        group = list(itertools.islice(batches, accumulation))
        complete = len(group) == accumulation and not any(is_end(batch) for batch in group)
        if accelerator.gather(torch.tensor([int(complete)], device=accelerator.device)).min().item() == 0:
            return
        for batch in group:
            yield send_to_device(batch, accelerator.device)
