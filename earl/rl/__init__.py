"""Reinforcement-learning pieces as small pure functions: advantages, clipped policy losses,
and log-probabilities over exactly the distribution the sampler drew from."""
