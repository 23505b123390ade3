"""Training recipes: the defaults of each ``--preset`` of the training scripts (every value overridable).

Pre-training recipes follow the paper (Table 10) where it and the reference launch scripts differ:
batch 1024 (the reference script runs 8), projector output 256, and the paper's temperature
tau(sigma) = tau1 (1 - u) + tau2 u with tau2 cosine-annealed 0.2 -> 0.1 (the reference config uses a
constant 0.1: ``--consistency_tau constant``).

Batches are global (``global_batch_size``: images per optimisation step over all processes and accumulation
steps, as the paper states them), so a recipe trains the same on 1 or 64 GPUs; ``--train_batch_size`` on the
command line gives a per-device batch instead (diffusers' meaning) and replaces the recipe's global one.
"""

from .. import sigmas as sm

_RCM_PAPER = dict(
    global_batch_size=1024,
    max_train_steps=600_000,
    learning_rate=6e-4,
    lr_scheduler="cosine",
    lr_warmup_steps=10_000,
    adam_beta1=0.9,
    adam_beta2=0.95,
    weight_decay=0.03,
    momentum=0.99,
    momentum_bn_statistics="initial",  # the reference's quirk (notes section 11, item 8), which trained the paper's encoders
    contrastive_tau=0.2,
    consistency_tau="interpolated",
    tau1=0.1,
    tau2_start=0.2,
    tau2_end=0.1,
    curriculum_s0=20,
    curriculum_s1=1280,
    mixed_precision="bf16",
    dataloader_num_workers=2,
)

RCM_RECIPES: dict[str, dict] = {
    **{
        f"RCM-{size}/{patch}": dict(_RCM_PAPER, model=f"RCM-{size}/{patch}", weight_decay=0.05 if size == "L" else 0.03)
        for size in "SBL"
        for patch in (16, 32)
    },
    # A small encoder for the offline digits data set (16 px, 16 patches): minutes on a laptop CPU.
    "RCM-tiny/digits": dict(
        _RCM_PAPER,
        model=dict(sample_size=16, patch_size=4, depth=4, embed_dim=128, num_heads=4,
                   projector_hidden_dim=512, projector_dim=128),
        dataset_name="digits",
        global_batch_size=64,
        max_train_steps=300,
        learning_rate=1e-3,
        lr_warmup_steps=30,
        weight_decay=0.05,
        mixed_precision="no",
        dataloader_num_workers=0,  # in-memory 16 px images: worker start-up per epoch costs more than it saves
        momentum_bn_statistics="online",  # what trained the shipped digits encoder
    ),
}


def get_recipe(name: str, recipes: dict[str, dict]) -> dict:
    """A copy of recipe ``name`` from ``recipes``; a clear error for unknown names."""
    if name not in recipes:
        raise ValueError(f"unknown `preset` {name!r}; choose one of {', '.join(recipes)}.")
    return dict(recipes[name])


_DIFFUSION_PAPER = dict(
    mode="diffusion",
    global_batch_size=1024,
    max_train_steps=1_000_000,
    learning_rate=1e-4,
    lr_scheduler="cosine",
    lr_warmup_steps=10_000,
    adam_beta1=0.9,
    adam_beta2=0.999,
    weight_decay=0.01,
    max_grad_norm=0.5,
    clip_after_step=10_000,  # the reference clips only after warmup
    ema_decay=0.9999,
    label_dropout=0.1,
    random_flip=True,
    decoder_dropout=0.0,
    p_mean=-1.2,
    p_std=1.6,
    grid_size=1280,
    loss_weighting="reference",
    mixed_precision="bf16",
    num_inference_steps=32,
    guidance_scale=2.5,
    guidance_interval=sm.GUIDANCE_INTERVAL,
    dataloader_num_workers=2,
)
_CONSISTENCY_PAPER = dict(
    _DIFFUSION_PAPER,
    mode="consistency",
    global_batch_size=256,  # the reference launch script (its config says 1024)
    lr_scheduler="step",
    lr_step_milestones=(400_000, 500_000),
    lr_step_factors=(0.3, 0.08),
    adam_beta2=0.99,
    weight_decay=0.03,
    max_grad_norm=None,
    clip_after_step=None,
    label_dropout=0.0,
    decoder_dropout=0.5,
    p_mean=-0.4,
    p_std=1.6,
    ect_q=2.0,
    ect_k=8.0,
    ect_b=1.0,
    ect_stage_length=100_000,
    huber_c=0.06,
    aux_tau=0.1,
    aux_weight=1.0,
    num_inference_steps=1,
    guidance_scale=1.0,
)
_TINY = dict(
    dataset_name="digits",
    random_flip=False,  # a mirrored digit is another glyph
    model=dict(sample_size=16, patch_size=4, depth=4, embed_dim=128, num_heads=4,
               decoder_depth=4, decoder_embed_dim=128, decoder_num_heads=4, num_classes=10),
    global_batch_size=64,
    learning_rate=1e-3,
    lr_warmup_steps=50,
    clip_after_step=50,
    ema_decay=0.995,
    mixed_precision="no",
    dataloader_num_workers=0,
)

# Fine-tuning recipes (paper Tables 9 and 11; reference notes sections 5 and 6). ``encoder_preset`` names
# the pre-training recipe whose output ``--encoder`` should point to (a train_rcm.py folder or a reference nnet.pth).
EPG_RECIPES: dict[str, dict] = {
    "EPG-XL/16": dict(_DIFFUSION_PAPER, model="EPG-XL/16", encoder_preset="RCM-B/16"),
    "EPG-XXL/16": dict(_DIFFUSION_PAPER, model="EPG-XXL/16", encoder_preset="RCM-B/16"),
    "EPG-G/16": dict(_DIFFUSION_PAPER, model="EPG-G/16", encoder_preset="RCM-B/16"),
    "EPG-L/32": dict(_DIFFUSION_PAPER, model="EPG-L/32", encoder_preset="RCM-L/32", guidance_scale=3.2),
    "EPG-L/16-consistency": dict(_CONSISTENCY_PAPER, model="EPG-L/16", encoder_preset="RCM-L/16"),
    # The shipped digits defaults (pipelines/epg-digits-*). Departures from the paper recipe, for a 2M-parameter
    # model trained for minutes on a CPU (TRAINING.md, "Digits defaults"): plain x0 MSE instead of the 1/dsigma
    # weighting, lr 1e-3, a proposal centred one e-fold higher (more of the high noise levels that decide the
    # class), no flips, guidance 3; consistency: weight 1 instead of 1/(t - r).
    "EPG-tiny/digits-diffusion": {**_DIFFUSION_PAPER, **_TINY, "encoder_preset": "RCM-tiny/digits",
                                  "loss_weighting": "uniform", "p_mean": 0.0, "max_train_steps": 6000,
                                  "guidance_scale": 3.0},
    "EPG-tiny/digits-consistency": {**_CONSISTENCY_PAPER, **_TINY, "encoder_preset": "RCM-tiny/digits",
                                    "loss_weighting": "uniform", "max_train_steps": 5000, "lr_step_milestones": (3500, 4250),
                                    "ect_stage_length": 800},
}
