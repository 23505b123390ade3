"""What the training scripts share: data, objectives, curricula, checkpoints, logging and export."""
