"""The models: each a named factory with a docstring, registered by name (``cifarlab models`` lists them).

- ``registry``: :func:`register`, :func:`build_model`, the argument checks, parameter and MAC counts;
- ``mycnn``: MyCNN, the course project's custom CNN;
- ``resnet``: ResNet-18 (torchvision's, and with a CIFAR stem);
- ``fastcnn``: FastCNN, the fast recipe's network, and its whitened stem.

Importing the package registers every model.
"""

# isort: off
# the order of registration is the order `cifarlab models` lists them in
from cifarlab.models import mycnn
from cifarlab.models import resnet
from cifarlab.models import fastcnn

# isort: on
from cifarlab.models.registry import MODELS, build_model

__all__ = ["MODELS", "build_model", "fastcnn", "mycnn", "resnet"]
