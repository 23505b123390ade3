"""Loading weights into our models: the reference implementation's plain state dicts (``nnet.pth``,
``nnet_ema.pth``) with ``from_single_file``, and saved folders with ``from_pretrained``, both refusing missing or
non-finite weights with the name of what is wrong."""

import os
from pathlib import Path

import torch
from safetensors.torch import load_file

from .presets import get_preset


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a torch pickle, never executing code from the file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint file {str(path)!r} does not exist or is not a file.")
    try:
        if path.suffix == ".safetensors":
            state_dict = load_file(path)
        else:
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated file, pickle with code, foreign format
        raise ValueError(f"cannot read checkpoint {str(path)!r} as a weights-only state dict: {error}") from error
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ValueError(f"checkpoint {str(path)!r} is not a plain state dict of tensors.")
    return state_dict


def check_state_dict(model: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Raise a ValueError naming the first missing, unexpected or mis-shaped key."""
    expected = model.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    if missing:
        raise ValueError(f"checkpoint lacks {len(missing)} key(s) of {type(model).__name__}, first: {missing[0]!r}.")
    if unexpected:
        raise ValueError(
            f"checkpoint has {len(unexpected)} key(s) unknown to {type(model).__name__}, first: {unexpected[0]!r}."
        )
    for key, value in expected.items():
        if tuple(state_dict[key].shape) != tuple(value.shape):
            raise ValueError(
                f"shape mismatch for {key!r}: checkpoint {tuple(state_dict[key].shape)}, model {tuple(value.shape)}."
            )


def check_finite(model: torch.nn.Module, source: str) -> None:
    """Raise a ValueError naming the first parameter or buffer of ``model`` that holds NaN or inf."""
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_floating_point() and tensor.device.type != "meta" and not torch.isfinite(tensor).all():
            raise ValueError(f"{source}: weight {name!r} holds non-finite values (NaN or inf); the file is corrupt.")


class LoadingMixin:
    """``from_single_file`` for original-format (reference) checkpoints, as diffusers offers for its models, and
    ``from_pretrained`` that checks the weights. Listed before ``ModelMixin`` among the model's bases."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """diffusers' ``from_pretrained``; a local folder without its weights file, or weights holding NaN or inf,
        are refused with the file or tensor named."""
        folder = Path(pretrained_model_name_or_path, kwargs.get("subfolder") or "")
        if (folder / "config.json").is_file() and not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
            raise ValueError(f"{str(folder)!r} has a config.json but no weights (diffusion_pytorch_model.safetensors).")
        model = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        check_finite(model, f"{cls.__name__} from {str(folder)!r}")
        return model

    @classmethod
    def from_single_file(
        cls,
        checkpoint: str | os.PathLike | dict[str, torch.Tensor],
        preset: str | None = None,
        dtype: torch.dtype | None = None,
        **config,
    ):
        """Build a model from a reference state dict and an architecture.

        Args:
            checkpoint: a path to ``nnet.pth`` / ``nnet_ema.pth`` / ``.safetensors``, or a state dict.
            preset: a preset name such as ``"EPG-XL/16"`` or ``"RCM-B/16"``; ``config`` entries override it.
            dtype: optional dtype to cast the loaded model to.
            **config: explicit architecture arguments of the model class (needed without a preset).
        """
        if preset is not None:
            class_name, preset_config = get_preset(preset)
            if class_name != cls.__name__:
                raise ValueError(f"`preset`={preset!r} describes a {class_name}, not a {cls.__name__}.")
            config = {**preset_config, **config}
        if isinstance(checkpoint, dict):  # the model must not share storage with the caller's tensors
            state_dict = {key: value.clone() for key, value in checkpoint.items()}
        else:
            state_dict = load_state_dict_file(checkpoint)
        with torch.device("meta"):  # no random initialisation: every tensor comes from the checkpoint
            model = cls(**config)
        check_state_dict(model, state_dict)
        model.load_state_dict(state_dict, strict=True, assign=True)
        check_finite(model, f"{cls.__name__} from a reference checkpoint")
        model.eval()
        return model.to(dtype) if dtype is not None else model
