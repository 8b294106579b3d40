"""The data: every dataset read into in-memory uint8 tensors (:class:`ImageData`), split, normalised and batched.

- ``safe_pickle``: an unpickler that builds only plain data and numpy arrays (the CIFAR files are pickles);
- ``cifar10``: CIFAR-10 read from the official files (and downloaded), :class:`ImageData`;
- ``cifar100``: CIFAR-100, fine or coarse labels;
- ``images``: the one image decoder (bounded memory, an allow-list of formats) and resizing;
- ``folder_cache``: the on-disk cache of decoded image folders (``.npy`` and JSON, checked before use);
- ``folders``: a folder of the user's images, decoded once on every core and cached;
- ``split``: the stratified validation split, balanced slices, per-channel normalisation;
- ``batches``: batches cut, augmented and normalised as tensor operations;
- ``corruptions``: the 15 CIFAR-10-C corruptions at 5 severities (``corrupt``), spatial ones in ``corruptions_spatial``;
- ``checks``: a dataset record's checks (class names, image size, normalisation), shared with checkpoints;
- ``loading``: which dataset a run asks for (``load_dataset``) or was trained on (``reload``).
"""

from cifarlab.data.cifar10 import ImageData

__all__ = ["ImageData"]
