"""Image batches in the ADM evaluator's format: an ``.npz`` whose ``arr_0`` is uint8 (N, H, W, 3), optionally
``arr_1`` class labels; reference batches may also hold precomputed statistics (``mu``, ``sigma`` of the pool
features and ``mu_s``, ``sigma_s`` of the spatial features).

Image arrays are read and written in batches straight from and into the zip member, so 50k images at 256 px
(9.8 GB) never have to fit in memory.
"""

import os
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

IMAGES, LABELS = "arr_0", "arr_1"
STATISTICS = ("mu", "sigma", "mu_s", "sigma_s")


def check_images(shape: tuple, dtype: np.dtype, what: str) -> None:
    """Raise a ValueError starting with ``what`` (e.g. "`sample_npz`='x.npz'") unless (shape, dtype) is ADM's
    uint8 (N, H, W, 3)."""
    if np.dtype(dtype) != np.uint8:
        raise ValueError(f"{what} must hold uint8 images (0-255), got dtype {np.dtype(dtype)}.")
    if len(shape) != 4 or shape[-1] != 3:
        hint = " (channels first? ADM's format is channels last)" if len(shape) == 4 and shape[1] == 3 else ""
        raise ValueError(f"{what} must have shape (N, H, W, 3), got {tuple(shape)}{hint}.")
    if shape[0] == 0:
        raise ValueError(f"{what} holds no images.")


def npz_keys(path: str, name: str) -> list[str]:
    """The array names in the npz ``path``; a ValueError naming the argument ``name`` if it is not one."""
    if not os.path.isfile(path):
        raise ValueError(f"`{name}`={path!r} does not exist.")
    try:
        with zipfile.ZipFile(path) as archive:
            return [n.removesuffix(".npy") for n in archive.namelist()]
    except zipfile.BadZipFile as error:
        raise ValueError(f"`{name}`={path!r} is not an .npz file: {error}") from error


class NpzImageReader:
    """Reads ``arr_0`` of an ADM npz in batches without loading it whole; validates the format on opening.

    Args:
        path: the ``.npz`` file.
        name: the argument name used in error messages.
    """

    def __init__(self, path: str, name: str = "sample_npz"):
        self.path, self.name = path, name
        keys = npz_keys(path, name)
        if IMAGES not in keys:
            raise ValueError(f"`{name}`={path!r} has no image array {IMAGES!r}; it holds {keys}.")
        with zipfile.ZipFile(path) as archive, archive.open(f"{IMAGES}.npy") as f:
            self.shape, self.dtype, self.offset = _read_header(f, path)
        check_images(self.shape, self.dtype, f"`{name}`={path!r}")

    def __len__(self) -> int:
        return self.shape[0]

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """Consecutive uint8 (B, H, W, 3) arrays covering all images in order."""
        row = int(np.prod(self.shape[1:]))
        with zipfile.ZipFile(self.path) as archive, archive.open(f"{IMAGES}.npy") as f:
            f.read(self.offset)
            for start in range(0, len(self), batch_size):
                count = min(batch_size, len(self) - start)
                data = f.read(count * row)
                if len(data) != count * row:
                    raise ValueError(f"`{self.name}`={self.path!r} is truncated at image {start}.")
                yield np.frombuffer(bytearray(data), dtype=np.uint8).reshape(count, *self.shape[1:])


def _read_header(f, path: str) -> tuple[tuple, np.dtype, int]:
    version = np.lib.format.read_magic(f)
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    if version not in readers:
        raise ValueError(f"{path!r}: unsupported .npy format version {version}.")
    shape, fortran_order, dtype = readers[version](f)
    if fortran_order:
        raise ValueError(f"{path!r}: Fortran-ordered image arrays are not ADM's format.")
    return shape, dtype, f.tell()


def read_labels(path: str, name: str = "sample_npz") -> np.ndarray | None:
    """The ``arr_1`` class labels of an npz, or None when it has none."""
    if LABELS not in npz_keys(path, name):
        return None
    with np.load(path) as data:
        return data[LABELS].astype(np.int64)


def write_images_npz(path: str, shape: tuple, batches: Iterable[np.ndarray], labels: np.ndarray | None = None) -> None:
    """Stream uint8 (N, H, W, 3) ``batches`` into ``path`` as ``arr_0`` (and ``labels`` as ``arr_1``).

    The file appears under its name only once complete (written to ``path + ".tmp"``, then renamed), so an
    interrupted write never leaves a truncated npz behind.
    """
    check_images(shape, np.uint8, "`images`")
    tmp, written = f"{path}.tmp", 0
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        with archive.open(f"{IMAGES}.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": tuple(shape)})
            for batch in batches:
                check_images(batch.shape, batch.dtype, "`images` batch")
                f.write(np.ascontiguousarray(batch).tobytes())
                written += len(batch)
        if labels is not None:
            with archive.open(f"{LABELS}.npy", "w") as f:
                np.lib.format.write_array(f, np.asarray(labels, dtype=np.int64))
    if written != shape[0]:
        os.remove(tmp)
        raise ValueError(f"wrote {written} images but the declared shape has {shape[0]}.")
    os.replace(tmp, path)


@dataclass
class ReferenceBatch:
    """A reference batch: its images (a reader) and/or its precomputed statistics (None when absent)."""

    path: str
    images: NpzImageReader | None
    statistics: dict[str, np.ndarray] | None


def read_reference(path: str, name: str = "ref_npz") -> ReferenceBatch:
    """Open an ADM reference batch: ``arr_0`` images, ``mu``/``sigma``/``mu_s``/``sigma_s`` statistics, or both."""
    images = NpzImageReader(path, name) if IMAGES in npz_keys(path, name) else None
    with np.load(path) as data:
        present = [k for k in STATISTICS if k in data.files]
        statistics = {k: data[k] for k in STATISTICS} if len(present) == len(STATISTICS) else None
    if images is None and statistics is None:
        raise ValueError(f"`{name}`={path!r} holds neither images ({IMAGES!r}) nor all of {list(STATISTICS)}.")
    return ReferenceBatch(path=path, images=images, statistics=statistics)

