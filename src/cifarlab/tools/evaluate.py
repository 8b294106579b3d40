"""``cifarlab evaluate``: rebuild a model and its normalisation from a checkpoint alone and score a split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cifarlab.base.errors import CheckpointError, UsageError
from cifarlab.data.loading import data_source, reload
from cifarlab.engine.device import pick_device
from cifarlab.engine.infer import evaluate_checkpoint
from cifarlab.runs.checkpoint import load_checkpoint, model_from_checkpoint
from cifarlab.runs.metrics import write_test_results


def evaluate(
    run_or_checkpoint: str | Path,
    split: str = "test",
    data_dir: str | None = None,
    device: str = "auto",
    dataset: str | None = None,
    out: str | Path | None = None,
) -> dict[str, Any]:
    """Write ``<split>_metrics.json`` and ``<split>_predictions.npz`` beside the checkpoint (or into ``out``).

    The images are the dataset the checkpoint records (CIFAR-10 for checkpoints without a record). CIFAR comes
    from ``data_dir``, else $CIFARLAB_DATA_DIR, else ./data: never from a folder recorded in the checkpoint (a
    checkpoint may come from anyone). An image folder comes from ``dataset``, else the recorded path, and is used
    only if its file list matches the recorded fingerprint. The metrics name the folder.
    """
    if split not in ("test", "val"):
        raise UsageError(f"--split must be 'test' or 'val' (got {split!r})")
    state = load_checkpoint(run_or_checkpoint)
    model_from_checkpoint(state)  # a checkpoint that does not fit its model is refused before any data is read
    out_dir = Path(out) if out else Path(state["path"]).parent
    out_dir.mkdir(parents=True, exist_ok=True)
    data = reload(state.get("dataset") or {"kind": "cifar10"}, data_dir, dataset)
    if list(state["classes"]) != list(data.classes):
        raise CheckpointError(
            f"{state['path']} was trained on classes {', '.join(state['classes'])}, "
            f"not on the {len(data.classes)} classes of the data in {data_source(data, data_dir)}"
        )
    probs, y, index = evaluate_checkpoint(state, data, split, pick_device(device))
    checkpoint = Path(state["path"]).name
    return write_test_results(
        out_dir,
        split,
        probs,
        y,
        index,
        list(data.classes),
        {"checkpoint": checkpoint, "epoch": state["epoch"], "data_dir": data_source(data, data_dir)},
    )
