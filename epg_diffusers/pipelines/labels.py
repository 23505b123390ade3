"""Class labels: ImageNet names, name -> id lookup and validation, and the data normalisation constants."""

import json
from importlib import resources

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD_X2 = (0.458, 0.448, 0.45)  # 2 x ImageNet std: normalised data has std ~0.5 = sigma_data


def imagenet_id2label() -> dict[int, str]:
    """The 1000 ImageNet-1k class names in the standard (sorted synset) index order."""
    text = resources.files("epg_diffusers").joinpath("data/imagenet_classes.json").read_text(encoding="utf-8")
    return {int(k): v for k, v in json.loads(text).items()}


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
        if isinstance(class_labels, torch.Tensor):
            class_labels = class_labels.reshape(-1).tolist()
        elif isinstance(class_labels, (int, str)):
            class_labels = [class_labels]
        if class_labels is None or len(class_labels) == 0:
            raise ValueError("`class_labels` must name at least one class.")
        ids = []
        for label in class_labels:
            if isinstance(label, (list, tuple)):  # one-element nested lists, as diffusers' batch tests pass them
                ids.extend(self.resolve(label))
            elif isinstance(label, str):
                ids.append(self._id(label))
            elif isinstance(label, int) and not isinstance(label, bool):
                if not 0 <= label < self.num_classes:
                    raise ValueError(f"`class_labels` has {label}, outside the valid range [0, {self.num_classes - 1}].")
                ids.append(label)
            else:
                raise ValueError(f"`class_labels` entries must be ints or names, got {type(label).__name__}.")
        return ids
