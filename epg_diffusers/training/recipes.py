"""Training recipes: the defaults of each ``--preset`` of the training scripts (every value overridable).

Pre-training recipes follow the paper (Table 10) where it and the reference launch scripts differ:
batch 1024 (the reference script runs 8), projector output 256, and the paper's temperature
tau(sigma) = tau1 (1 - u) + tau2 u with tau2 cosine-annealed 0.2 -> 0.1 (the reference config uses a
constant 0.1: ``--consistency_tau constant``).
"""

_RCM_PAPER = dict(
    train_batch_size=1024,
    max_train_steps=600_000,
    learning_rate=6e-4,
    lr_scheduler="cosine",
    lr_warmup_steps=10_000,
    adam_beta1=0.9,
    adam_beta2=0.95,
    weight_decay=0.03,
    momentum=0.99,
    contrastive_tau=0.2,
    consistency_tau="interpolated",
    tau1=0.1,
    tau2_start=0.2,
    tau2_end=0.1,
    curriculum_s0=20,
    curriculum_s1=1280,
    mixed_precision="bf16",
)

RCM_RECIPES: dict[str, dict] = {
    **{
        f"RCM-{size}/{patch}": dict(_RCM_PAPER, model=f"RCM-{size}/{patch}", weight_decay=0.05 if size == "L" else 0.03)
        for size in "SBL"
        for patch in (16, 32)
    },
    # A small encoder for the offline digits data set (32 px): minutes on a laptop CPU.
    "RCM-tiny/digits": dict(
        _RCM_PAPER,
        model=dict(sample_size=32, patch_size=4, depth=4, embed_dim=128, num_heads=4,
                   projector_hidden_dim=512, projector_dim=128),
        dataset_name="digits",
        train_batch_size=128,
        max_train_steps=600,
        learning_rate=1e-3,
        lr_warmup_steps=50,
        weight_decay=0.05,
        mixed_precision="no",
    ),
}


def get_recipe(name: str, recipes: dict[str, dict]) -> dict:
    """A copy of recipe ``name`` from ``recipes``; a clear error for unknown names."""
    if name not in recipes:
        raise ValueError(f"unknown `preset` {name!r}; choose one of {', '.join(recipes)}.")
    return dict(recipes[name])
