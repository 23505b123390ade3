"""Class labels: ImageNet names, name -> id lookup and validation, and the data normalisation constants."""

import json
import math
import numbers
from importlib import resources

import numpy as np
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD_X2 = (0.458, 0.448, 0.45)  # 2 x ImageNet std: normalised data has std ~0.5 = sigma_data


def imagenet_id2label() -> dict[int, str]:
    """The 1000 ImageNet-1k class names in the standard (sorted synset) index order."""
    text = resources.files("epg_diffusers").joinpath("data/imagenet_classes.json").read_text(encoding="utf-8")
    return {int(k): v for k, v in json.loads(text).items()}


def check_normalisation(image_mean, image_std, channels: int) -> None:
    """``image_mean`` / ``image_std``: one finite value per channel, the std positive (what the model trained with)."""
    for name, values in (("image_mean", image_mean), ("image_std", image_std)):
        values = list(values) if isinstance(values, (list, tuple)) else [values]
        if len(values) != channels or not all(isinstance(v, numbers.Real) and math.isfinite(v) for v in values):
            raise ValueError(f"`{name}` must be {channels} finite numbers, one per channel, got {values}.")
    if min(image_std) <= 0:
        raise ValueError(f"`image_std` must be positive, got {list(image_std)}.")


def check_id2label(id2label: dict[int, str], num_classes: int) -> None:
    """``id2label`` names every class of the model exactly once (ids 0 .. num_classes - 1), or is empty."""
    if id2label and sorted(id2label) != list(range(num_classes)):
        extra = sorted(set(id2label) - set(range(num_classes)))
        missing = sorted(set(range(num_classes)) - set(id2label))
        raise ValueError(f"`id2label` must name the model's {num_classes} classes (ids 0 to {num_classes - 1}); "
                         f"missing {missing[:10]}{'...' if len(missing) > 10 else ''}, unknown {extra[:10]}.")


class LabelMap:
    """Turns user class labels (ids, names, lists, tensors) into validated class ids."""

    def __init__(self, id2label: dict[int, str], num_classes: int):
        self.num_classes = num_classes
        self.name2ids: dict[str, set[int]] = {}
        for idx, names in id2label.items():
            for name in names.split(","):
                self.name2ids.setdefault(name.strip().lower(), set()).add(int(idx))

    def ids(self, names: str | list[str]) -> list[int]:
        """Ids of class names; a single string is one label (not split into characters)."""
        names = [names] if isinstance(names, str) else list(names)
        return [self._id(name) for name in names]

    def _id(self, name: str) -> int:
        found = self.name2ids.get(name.strip().lower())
        if not found:
            if not self.name2ids:
                raise ValueError(f"`class_labels` has the name {name!r} but this pipeline has no `id2label`.")
            close = sorted(n for n in self.name2ids if name.strip().lower() in n)[:5]
            hint = f" Did you mean one of {close}?" if close else ""
            raise ValueError(f"`class_labels` has the unknown class name {name!r}.{hint}")
        if len(found) > 1:
            raise ValueError(f"`class_labels` name {name!r} is ambiguous: classes {sorted(found)}; pass an id.")
        return next(iter(found))

    def resolve(self, class_labels) -> list[int]:
        """Validated ids for an int, a name, a list mixing both, or a tensor of ids."""
        if isinstance(class_labels, (torch.Tensor, np.ndarray)):
            class_labels = class_labels.reshape(-1).tolist()
        elif isinstance(class_labels, (numbers.Number, str)):  # one label
            class_labels = [class_labels]
        if class_labels is None or len(class_labels) == 0:
            raise ValueError("`class_labels` must name at least one class.")
        ids = []
        for label in class_labels:
            if isinstance(label, (list, tuple)):  # one-element nested lists, as diffusers' batch tests pass them
                ids.extend(self.resolve(label))
            elif isinstance(label, str):
                ids.append(self._id(label))
            elif isinstance(label, numbers.Integral) and not isinstance(label, bool):  # int, numpy and torch ints
                if not 0 <= label < self.num_classes:
                    raise ValueError(f"`class_labels` has {label}, outside the valid range [0, {self.num_classes - 1}].")
                ids.append(int(label))
            else:
                raise ValueError(f"`class_labels` entries must be integer class ids or names, got "
                                 f"{type(label).__name__} {label!r}.")
        return ids
