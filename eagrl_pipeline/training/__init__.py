"""Policy training: SFT on distilled trajectories, then GRPO with the EAG-RL rewards."""
