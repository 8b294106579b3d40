"""The tools built on trained runs and on the engine, one command each.

- ``evaluate``: ``cifarlab evaluate``: a checkpoint alone, scored on a split;
- ``predict``: ``cifarlab predict``: the user's own images, classified;
- ``export``: ``cifarlab export``: ONNX or TorchScript files that need neither cifarlab nor its code;
- ``benchmark``: ``cifarlab benchmark``: throughput against the PIL + DataLoader pipeline, time to accuracy;
- ``study``: ``cifarlab study``: the course project's whole study in one command.
"""
