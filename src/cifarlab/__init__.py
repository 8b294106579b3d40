"""cifarlab: train, evaluate, explain and compare image classifiers on CIFAR-10."""

__version__ = "0.1.0"
