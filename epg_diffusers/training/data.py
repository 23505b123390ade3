"""Training data: Hugging Face ``datasets`` sources, ADM center crop, preprocessing, augmentations.

Sources (:func:`load_image_dataset`): a Hub name (``ILSVRC/imagenet-1k``), a ``save_to_disk`` directory (such
as the output of ``epg preprocess``), an ``imagefolder`` directory (``<class>/<image>``), or ``"digits"``:
scikit-learn's 8x8 handwritten digits (1797 images, 10 classes) upscaled to RGB, which ships inside the
package and needs no download. All return a dataset with an ``image`` and a ``label`` column.
"""

import io
import logging
import os

import numpy as np
import PIL.Image
import torch
from datasets import ClassLabel, Dataset, Features, Image, load_dataset, load_from_disk

from ..pipelines.labels import IMAGENET_MEAN, IMAGENET_STD_X2
from .seeding import stream_seed

logger = logging.getLogger(__name__)
DIGITS = "digits"


def digits_dataset(resolution: int = 32) -> Dataset:
    """scikit-learn's digits as RGB PIL images of ``resolution`` px (bicubic upscaling), labels 0-9."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = [
        PIL.Image.fromarray((255 - img * 255 / 16).astype(np.uint8)).resize((resolution, resolution), PIL.Image.BICUBIC)
        .convert("RGB")
        for img in digits.images
    ]  # dark digits on white, like ink on paper
    features = Features({"image": Image(), "label": ClassLabel(names=[str(i) for i in range(10)])})
    return Dataset.from_dict({"image": images, "label": digits.target.tolist()}, features=features)


def load_image_dataset(
    name: str, split: str = "train", image_column: str = "image", label_column: str = "label", resolution: int = 32
) -> Dataset:
    """Load ``name`` (Hub id, ``save_to_disk`` dir, ``imagefolder`` dir or ``"digits"``) as (image, label)."""
    if name == DIGITS:
        return digits_dataset(resolution)
    if os.path.isdir(name):
        if os.path.exists(os.path.join(name, "dataset_info.json")) or os.path.exists(os.path.join(name, "state.json")):
            dataset = load_from_disk(name)
            dataset = dataset[split] if hasattr(dataset, "keys") else dataset
        else:
            dataset = load_dataset("imagefolder", data_dir=name, split=split)
    else:
        try:
            dataset = load_dataset(name, split=split)
        except Exception as error:  # unknown name, no network, missing split
            raise ValueError(f"cannot load data set `dataset_name`={name!r} (split {split!r}): {error}") from error
    missing = [c for c in (image_column, label_column) if c not in dataset.column_names]
    if missing:
        raise ValueError(f"data set {name!r} has no column(s) {missing}; columns: {dataset.column_names}.")
    dataset = dataset.rename_columns({c: n for c, n in ((image_column, "image"), (label_column, "label")) if c != n})
    return dataset.select_columns(["image", "label"])


def adm_center_crop(image: PIL.Image.Image, resolution: int) -> PIL.Image.Image:
    """ADM's center crop: halve with BOX while the short side >= 2 res, BICUBIC to res, then crop the center."""
    while min(image.size) >= 2 * resolution:
        image = image.resize(tuple(x // 2 for x in image.size), resample=PIL.Image.BOX)
    scale = resolution / min(image.size)
    image = image.resize(tuple(round(x * scale) for x in image.size), resample=PIL.Image.BICUBIC)
    left, top = (image.size[0] - resolution) // 2, (image.size[1] - resolution) // 2
    return image.crop((left, top, left + resolution, top + resolution))


def decode_rgb(value) -> PIL.Image.Image | None:
    """A PIL RGB image from a decoded image or raw ``{"bytes", "path"}``; None when it cannot be read."""
    try:
        if isinstance(value, PIL.Image.Image):
            image = value
        else:
            image = PIL.Image.open(io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"])
        return image.convert("RGB")  # grayscale, CMYK and palette images become RGB
    except Exception:  # truncated or corrupt file
        return None


def preprocess(dataset: Dataset, resolution: int, output_dir: str, num_proc: int | None = None) -> int:
    """Center-crop every image once and ``save_to_disk`` as PNG; returns how many unreadable images were skipped."""

    def crop(batch):
        images = [decode_rgb(value) for value in batch["image"]]
        return {
            "image": [adm_center_crop(im, resolution) if im is not None else None for im in images],
            "valid": [im is not None for im in images],
        }

    dataset = dataset.cast_column("image", Image(decode=False))
    cropped = dataset.map(crop, batched=True, batch_size=64, num_proc=num_proc, desc="center crop")
    skipped = len(cropped) - sum(cropped["valid"])
    cropped = cropped.filter(lambda valid: valid, input_columns="valid").remove_columns("valid")
    cropped.cast_column("image", Image()).save_to_disk(output_dir)
    logger.info("preprocessed %d images to %s, skipped %d unreadable", len(cropped), output_dir, skipped)
    return skipped


def normalize() -> "torch.nn.Module":
    from torchvision.transforms import v2

    return v2.Normalize(IMAGENET_MEAN, IMAGENET_STD_X2)  # ImageNet mean, 2 x std: data std ~0.5 = sigma_data


def moco_view(resolution: int, blur_p: float, solarize_p: float):
    """One MoCo v3 view: crop 0.08-1, colour jitter p 0.8, grayscale p 0.2, blur, solarize, flip, normalise."""
    from torchvision.transforms import v2

    kernel = max(3, int(0.1 * resolution) // 2 * 2 + 1)  # odd, ~10% of the image as in BYOL / MoCo v3
    return v2.Compose([
        v2.RandomResizedCrop(resolution, scale=(0.08, 1.0), antialias=True),
        v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
        v2.RandomGrayscale(p=0.2),
        v2.RandomApply([v2.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=blur_p),
        v2.RandomSolarize(threshold=128, p=solarize_p),
        v2.RandomHorizontalFlip(),
        v2.ToImage(), v2.ToDtype(torch.float32, scale=True), normalize(),
    ])


def clean_view(resolution: int, random_flip: bool = True):
    """The clean branch: ADM center crop (a no-op on preprocessed data), horizontal flip (the paper's), normalise.

    ``random_flip=False`` for data whose mirror image is another thing (digits: a mirrored 2 is no 2).
    """
    from torchvision.transforms import v2

    return v2.Compose([
        v2.Lambda(lambda im: im if im.size == (resolution, resolution) else adm_center_crop(im, resolution)),
        *([v2.RandomHorizontalFlip()] if random_flip else []), v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
        normalize(),
    ])


class SeededImageDataset(torch.utils.data.Dataset):
    """Decodes and transforms sample ``i`` with RNG seeded by (seed, epoch, i): augmentations do not depend on
    worker count or process count, and a resumed run sees exactly the same views."""

    def __init__(self, dataset: Dataset, views: dict, seed: int):
        self.dataset, self.views, self.seed, self.epoch = dataset, views, seed, 0

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        row = self.dataset[index]
        image = decode_rgb(row["image"])
        if image is None:
            return {"valid": False, "label": row["label"]}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(stream_seed(self.seed, "augmentation", epoch=self.epoch, index=index))
            sample = {name: view(image) for name, view in self.views.items()}
        return {**sample, "label": row["label"], "valid": True}


def collate_skipping_broken(rows: list[dict]) -> dict:
    """Stack a batch; an unreadable image is replaced by a readable one of the same batch and counted."""
    valid = [row for row in rows if row["valid"]]
    if not valid:
        raise ValueError("a whole batch of images could not be read; check the data set.")
    filled = [row if row["valid"] else valid[i % len(valid)] for i, row in enumerate(rows)]
    batch = {k: torch.stack([row[k] for row in filled]) for k in filled[0] if k not in ("label", "valid")}
    batch["label"] = torch.tensor([row["label"] for row in filled])
    batch["broken"] = torch.tensor(len(rows) - len(valid))
    return batch


def rcm_views(resolution: int) -> dict:
    """The three pre-training views: view1 (blur 1.0), view2 (blur 0.1, solarize 0.2) and the clean x0."""
    return {
        "view1": moco_view(resolution, blur_p=1.0, solarize_p=0.0),
        "view2": moco_view(resolution, blur_p=0.1, solarize_p=0.2),
        "x0": clean_view(resolution),
    }


def add_arguments(parser):
    """``epg preprocess``: center-crop a data set once so training never re-decodes full-size JPEGs."""
    from ..cli import positive_int

    # dashes like every epg command; the underscore spellings of earlier versions stay accepted
    parser.add_argument("--dataset-name", "--dataset_name", required=True,
                        help="Hub id, imagefolder dir or save_to_disk dir")
    parser.add_argument("--split", default="train", help="data set split (default: train)")
    parser.add_argument("--image-column", "--image_column", default="image", help="image column (default: image)")
    parser.add_argument("--label-column", "--label_column", default="label", help="class id column (default: label)")
    parser.add_argument("--resolution", type=positive_int, required=True, help="e.g. 256 or 512")
    parser.add_argument("--output-dir", "--output_dir", required=True,
                        help="written with save_to_disk; pass it to training as --dataset_name")
    parser.add_argument("--num-proc", "--num_proc", type=positive_int, default=None, help="parallel worker processes")


def run(args) -> int:
    if args.resolution < 1:
        raise ValueError(f"`resolution` must be positive, got {args.resolution}.")
    if os.path.exists(args.output_dir) and os.listdir(args.output_dir):
        raise ValueError(f"`output_dir`={args.output_dir!r} exists and is not empty; refusing to overwrite it.")
    dataset = load_image_dataset(args.dataset_name, args.split, args.image_column, args.label_column, args.resolution)
    skipped = preprocess(dataset, args.resolution, args.output_dir, args.num_proc)
    print(f"wrote {args.output_dir}; skipped {skipped} unreadable image(s)")
    return 0
