"""The runs as the report reads them: :class:`RunView` (a run's folder, run.json, config, analysis summary, CSV
rows and robustness.json when there is one), loaded with an up-to-date analysis (computed now when missing or older
than the predictions).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cifarlab.base.errors import CifarlabError


@dataclass
class RunView:
    """One run as the report shows it: its folder, files and analysis summary."""

    path: Path
    info: dict[str, Any]
    config: dict[str, Any]
    summary: dict[str, Any]
    per_class: list[dict[str, str]]
    pairs: list[dict[str, str]]
    robustness: dict[str, Any] = field(default_factory=dict)  # robustness.json ({} without; "unreadable": why)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def analysis(self) -> Path:
        return self.path / "analysis"

    @property
    def robustness_dir(self) -> Path:
        from cifarlab.runs.layout import ROBUSTNESS_DIR

        return self.path / ROBUSTNESS_DIR

    @property
    def title(self) -> str:
        from cifarlab.runs.folder import run_title

        return run_title(self.name, self.info.get("model"))

    @property
    def dataset(self) -> dict[str, Any]:
        """The run's dataset record (CIFAR-10 at 32 px, marked assumed, for a run that predates records)."""
        from cifarlab.runs.folder import dataset_or_cifar10

        return dataset_or_cifar10(self.info.get("dataset"))


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def json_object(path: Path, data: Any) -> dict[str, Any]:
    """``data`` read from ``path``, which must be a JSON object."""
    if not isinstance(data, dict):
        raise CifarlabError(f"{path}: not a JSON object")
    return data


def load_view(run: Path, data_dir: str | None) -> RunView:
    """A run with an up-to-date analysis (computed now if missing or older than the predictions)."""
    from cifarlab.results.analysis import ensure_analysis
    from cifarlab.runs.folder import RunFolder

    summary = json_object(run / "analysis" / "summary.json", ensure_analysis(run, data_dir))
    folder = RunFolder(run)
    return RunView(
        run,
        folder.info,
        folder.config_record,
        summary,
        read_csv_rows(run / "analysis" / "per_class.csv"),
        read_csv_rows(run / "analysis" / "confused_pairs.csv"),
        robustness_record(folder),
    )


def robustness_record(folder: Any) -> dict[str, Any]:
    """The run's robustness.json ({} when it has none); one that cannot be read is shown as why, not a failure."""
    try:
        return folder.robustness
    except CifarlabError as exc:
        return {"unreadable": str(exc)}
