"""Fine-tuning set-up: the pre-trained encoder inside a generator, parameter groups and learning-rate schedules."""

import bisect
import json
import os
from pathlib import Path

import torch

from ..models import RCMEncoderModel
from ..models.loading import load_state_dict_file

TRUNK_PREFIXES = ("patch_embed.", "cls_token", "pos_embed", "blocks.", "norm.")
TRUNK_CONFIG = ("sample_size", "patch_size", "in_channels", "depth", "embed_dim", "num_heads", "mlp_ratio")


def _encoder_from_file(path: str, like) -> RCMEncoderModel:
    """An RCMEncoderModel from a reference ``nnet.pth`` whose trunk has the architecture of ``like``."""
    state = load_state_dict_file(path)
    if any(key.startswith("decoder_blocks.") for key in state):
        raise ValueError(f"`encoder`={path!r} is a generator checkpoint (decoder_blocks.*), not a pre-trained encoder.")
    if "projection_head.0.weight" not in state:
        raise ValueError(f"`encoder`={path!r} is not an RCM pre-training checkpoint (no projection_head.* keys).")
    config = {key: like.config[key] for key in TRUNK_CONFIG}
    config["projector_hidden_dim"] = state["projection_head.0.weight"].shape[0]
    config["projector_dim"] = state["projection_head.6.weight"].shape[0]
    try:
        return RCMEncoderModel.from_single_file(state, **config)
    except ValueError as error:
        raise ValueError(f"`encoder`={path!r} does not fit the generator's encoder: {error}") from error


def check_encoder_folder(source: str) -> None:
    """Refuse a folder that is not a saved ``RCMEncoderModel`` (e.g. a generator or a pipeline) by what it is."""
    expected = "an RCMEncoderModel folder (train_rcm.py's <output_dir>/encoder) or a reference nnet.pth"
    if os.path.isfile(os.path.join(source, "model_index.json")):
        raise ValueError(f"`encoder`={source!r} is a pipeline folder, not an encoder: pass {expected}.")
    try:
        found = json.loads(Path(source, "config.json").read_text()).get("_class_name")
    except (OSError, ValueError) as error:
        raise ValueError(f"`encoder`={source!r} has no readable config.json ({error}): pass {expected}.") from error
    if found != RCMEncoderModel.__name__:
        raise ValueError(f"`encoder`={source!r} is a saved {found}, not an RCMEncoderModel: pass {expected}.")


def load_encoder(model, source: str, freeze: bool = False, reference_like=None) -> RCMEncoderModel:
    """Load a pre-trained encoder (train_rcm.py folder or reference file); copy its trunk into ``model``.

    Returns the full encoder (with projector), which consistency fine-tuning uses as its frozen perceptual
    network. An encoder whose architecture differs from the generator's encoder is refused with the fields
    that differ.
    """
    like = model if model is not None else reference_like
    if os.path.isdir(source):
        check_encoder_folder(source)
        encoder = RCMEncoderModel.from_pretrained(source)
    elif os.path.isfile(source):
        encoder = _encoder_from_file(source, like)
    else:
        raise ValueError(f"`encoder`={source!r} is neither an encoder folder nor a checkpoint file.")
    differs = {k: (encoder.config[k], like.config[k]) for k in TRUNK_CONFIG if encoder.config[k] != like.config[k]}
    if differs:
        detail = ", ".join(f"{k}: encoder {a} vs generator {b}" for k, (a, b) in differs.items())
        raise ValueError(f"`encoder`={source!r} does not fit the generator's encoder ({detail}).")
    if model is not None:
        unexpected = model.load_state_dict(encoder.trunk_state_dict(), strict=False).unexpected_keys
        assert not unexpected, unexpected  # same architecture, checked above
        if freeze:
            for name, param in model.named_parameters():
                param.requires_grad_(not name.startswith(TRUNK_PREFIXES))
    return encoder


def param_groups(model, lr: float, weight_decay: float, layer_decay: float = 1.0) -> list[dict]:
    """AdamW groups: no weight decay on pos_embed / cls_token; lr x layer_decay^(depth + 1 - layer) per encoder layer."""
    depth = model.config.depth
    groups: dict[tuple, dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name.startswith(("cls_token", "pos_embed", "patch_embed.")):
            layer = 0
        elif name.startswith("blocks."):
            layer = int(name.split(".")[1]) + 1
        else:  # final encoder norm, class embedding and the whole decoder: top layer
            layer = depth + 1
        decay = 0.0 if name in ("pos_embed", "cls_token") else weight_decay
        group = groups.setdefault((layer, decay), {"params": [], "weight_decay": decay,
                                                   "lr": lr * layer_decay ** (depth + 1 - layer)})
        group["params"].append(param)
    return list(groups.values())


def make_lr_scheduler(args, optimizer):
    """diffusers' named schedules, or ``"step"``: linear warmup, then x factor_i after milestone_i."""
    if args.lr_scheduler != "step":
        from diffusers.optimization import get_scheduler

        return get_scheduler(args.lr_scheduler, optimizer, num_warmup_steps=args.lr_warmup_steps,
                             num_training_steps=args.max_train_steps)
    milestones, factors = list(args.lr_step_milestones), [1.0, *args.lr_step_factors]
    if len(factors) != len(milestones) + 1:
        raise ValueError("`lr_step_factors` needs one factor per entry of `lr_step_milestones`.")

    def factor(step: int) -> float:
        warmup = min(1.0, step / args.lr_warmup_steps) if args.lr_warmup_steps else 1.0
        return warmup * factors[bisect.bisect_right(milestones, step)]

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def load_pipeline_init(source: str):
    """(transformer, scheduler prediction type) of a trained pipeline folder or Hub id, for ``--init_from_pipeline``:
    fine-tuning starts from its whole generator, encoder and decoder (ECT's initialisation of a consistency model
    from a diffusion model)."""
    from ..defaults import quiet_loading
    from ..pipelines import EPGPipeline

    if os.path.isdir(source) and not os.path.isfile(os.path.join(source, "model_index.json")):
        raise ValueError(f"`init_from_pipeline`={source!r} is not a pipeline folder (no model_index.json): pass the "
                         "folder train_epg.py exports (<output_dir>/pipeline) or a pipeline's Hub id.")
    try:
        with quiet_loading():
            pipe = EPGPipeline.from_pretrained(source)
    except Exception as error:
        raise ValueError(f"cannot load `init_from_pipeline`={source!r}: {error}") from error
    return pipe.transformer, pipe.scheduler.config.prediction_type
