"""The fine-tuning EMA (diffusers' ``EMAModel``): saved, loaded and made into a model, also when FSDP shards it.

Under FSDP2 (accelerate's ``distributed_type: FSDP`` with ``fsdp_version: 2``, ``training/accelerate/fsdp.yaml``)
every parameter is a ``DTensor`` holding this process's shard, and the EMA, created from the prepared model, keeps
a shard of each as well: it costs 1/P of the weights per process. Gathering the whole weights is a collective, so
:func:`ema_weights`, :func:`ema_model` and :func:`save_ema` must run on every process (only the main process
writes). Without FSDP the tensors are plain and nothing is communicated.
"""

from pathlib import Path

import torch
from diffusers.training_utils import EMAModel
from diffusers.utils import logging as diffusers_logging
from torch.distributed.tensor import DTensor, distribute_tensor

from ..defaults import quiet_loading
from ..models import EPGTransformer2DModel

EMA_DIR = "ema"  # inside checkpoint-<step>/
LEGACY_EMA = "custom_checkpoint_1.pkl"  # where accelerate pickled the EMA before it was saved as ema/
EMA_SETTINGS = ("decay", "min_decay", "optimization_step", "update_after_step", "use_ema_warmup", "inv_gamma", "power")


def full_tensors(tensors) -> list[torch.Tensor]:
    """The whole tensors of possibly sharded ones (a collective on every process when one is a ``DTensor``)."""
    return [t.full_tensor() if isinstance(t, DTensor) else t for t in tensors]


def shard_like(tensors, like) -> list[torch.Tensor]:
    """Whole ``tensors`` placed as ``like`` is: sharded the same way where ``like`` is a ``DTensor`` (a collective)."""
    placed = []
    for tensor, reference in zip(tensors, like, strict=True):
        if isinstance(reference, DTensor):
            tensor = distribute_tensor(tensor.to(reference.device_mesh.device_type, reference.dtype),
                                       reference.device_mesh, reference.placements)
        placed.append(tensor.to(reference.device, reference.dtype))
    return placed


def ema_weights(ema: EMAModel) -> list[torch.Tensor]:
    """The EMA weights, whole, in the order of the model's ``parameters()`` (collective under FSDP)."""
    return full_tensors(ema.shadow_params)


def ema_model(ema: EMAModel, config) -> EPGTransformer2DModel:
    """A fresh ``EPGTransformer2DModel`` of ``config`` holding the EMA weights, in eval mode (collective under FSDP)."""
    weights = ema_weights(ema)
    model = EPGTransformer2DModel.from_config(config).to(weights[0].device).eval()
    with torch.no_grad():
        for parameter, weight in zip(model.parameters(), weights, strict=True):
            parameter.copy_(weight)
    return model


def save_ema(ema: EMAModel, config, folder, is_main_process: bool = True) -> None:
    """``<folder>`` as ``EMAModel.save_pretrained`` writes it (the weights, the EMA's settings in the config), from
    the whole weights (collective under FSDP; the main process writes)."""
    model = ema_model(ema, config)
    if is_main_process:
        settings = {k: v for k, v in ema.state_dict().items() if k in EMA_SETTINGS}
        model.register_to_config(**settings)
        model.save_pretrained(folder)


class PickledEMA:
    """A run resumed from a checkpoint of an earlier version, whose EMA accelerate pickled as its second registered
    object, registers this in its place: accelerate then finds the object count it saved and loads the EMA."""

    def __init__(self, ema: EMAModel, device):
        self.ema, self.device = ema, device

    def state_dict(self) -> dict:
        return self.ema.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.ema.load_state_dict(state)
        self.ema.to(self.device)


def load_ema(ema: EMAModel, folder, device) -> None:
    """accelerate load-state hook: the EMA of a checkpoint from its ``ema/`` folder (:func:`save_ema`), sharded as
    the EMA is (collective under FSDP). A checkpoint of an earlier version has a pickle instead, which
    :class:`PickledEMA` loads."""
    path = Path(folder, EMA_DIR)
    if not path.is_dir():
        if not Path(folder, LEGACY_EMA).is_file():
            raise ValueError(f"{folder} holds no EMA weights (no {EMA_DIR}/ folder and no {LEGACY_EMA}).")
        return
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # the config also holds the EMA's settings, unknown to the model
    try:
        with quiet_loading():
            saved = EPGTransformer2DModel.from_pretrained(path)
    finally:
        diffusers_logging.set_verbosity(verbosity)
    shadow = [p.detach() for p in saved.parameters()]
    if [p.shape for p in shadow] != [p.shape for p in ema.shadow_params]:
        raise ValueError(f"{path} holds weights of another architecture than this run's model.")
    config = EPGTransformer2DModel.load_config(path)
    shadow = shard_like(shadow, ema.shadow_params)
    ema.load_state_dict({**{k: config[k] for k in EMA_SETTINGS if k in config}, "shadow_params": shadow})
    ema.to(device)
