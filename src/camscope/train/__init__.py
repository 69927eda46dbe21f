"""Training: batched tensor augmentation, schedules, checkpoints, the loop, distributed runs."""
