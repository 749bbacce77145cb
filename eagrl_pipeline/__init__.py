"""EAG-RL method in plain Python: data, experts, prompts, rewards, search, training, evaluation."""
