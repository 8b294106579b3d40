"""What a run is: its options and recipes, checked before anything is built.

- ``train_config``: :class:`TrainConfig` (every training option, with its checks), the named recipes, ``--set``;
- ``fast``: the fast-training switches' checks and the model arguments they turn into;
- ``scaling``: recipes scaled to a small dataset (validation share, batch and learning rate, schedule).
"""

from cifarlab.config.train_config import TrainConfig, make_config, validate

__all__ = ["TrainConfig", "make_config", "validate"]
