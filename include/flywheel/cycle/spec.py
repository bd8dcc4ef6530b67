"""The cycle a run stands for (its id, window, config and paths), and the stages' one clock."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from flywheel.config import FlywheelConfig
from flywheel.data.extract import Window, as_utc, lagged_window
from flywheel.errors import FlywheelError, WindowError
from flywheel.validation import ValidationLimits


class InsufficientDataError(FlywheelError):
    """Too few kept examples to train on: the cycle records itself and skips training."""


def now() -> datetime:
    """When a stage writes a row. Stages call it as ``spec.now()``, so that a test that needs a
    fixed clock patches this one attribute and every stage reads it."""
    return datetime.now(UTC)


@dataclass(frozen=True)
class CycleSpec:
    dag_id: str
    logical_date: datetime
    window: Window
    config: FlywheelConfig
    # Run everything, but leave the champion where it is (the decision is recorded as such).
    dry_run: bool = False
    # The phase whose capture policy the config already carries (see `flywheel.ops.phases`).
    phase: str | None = None

    @property
    def cycle_id(self) -> str:
        return f"{self.dag_id}-{self.logical_date:%Y%m%dT%H%M}"

    @property
    def work_dir(self) -> Path:
        return self.config.artefacts_root / "cycles" / self.cycle_id

    @property
    def dataset_dir(self) -> Path:
        return self.config.artefacts_root / "datasets" / self.cycle_id

    @property
    def challenger_version(self) -> str:
        return self.cycle_id

    @property
    def adapter_dir(self) -> Path:
        return self.config.artefacts_root / "adapters" / self.challenger_version

    @property
    def limits(self) -> ValidationLimits:
        return ValidationLimits.from_config(self.config.validation)

    def file(self, name: str) -> Path:
        return self.work_dir / name

    @property
    def twin_version(self) -> str:
        """The challenger's twin, trained without the window's newest days (`train.train_twin`)."""
        return f"{self.cycle_id}-twin"

    @property
    def newest_window(self) -> Window:
        """The window's newest `evaluation.newest_window_days`: the data the twin leaves out."""
        days = self.config.evaluation.newest_window_days
        return Window(start=max(self.window.start, self.window.end - timedelta(days=days)), end=self.window.end)


def make_cycle(
    dag_id: str,
    *,
    data_interval_end: datetime | None,
    logical_date: datetime | None,
    config: FlywheelConfig,
    window_start: datetime | None = None,
    dry_run: bool = False,
) -> CycleSpec:
    """The cycle a run stands for. Its window comes from ``data_interval_end`` (see
    `flywheel.data.extract`), unless an operator overrides it with ``window_start`` (then
    ``[start, start + window_days)``, with no lag)."""
    end = data_interval_end or logical_date
    if end is None:
        raise WindowError(
            f"{dag_id}: the run has neither a data interval nor a logical date; trigger it with a "
            "logical date (the week whose cycle should run)"
        )
    if window_start is not None:
        start = as_utc(window_start)
        window = Window(start=start, end=start + timedelta(days=config.extract.window_days))
        if window.end > as_utc(end):
            raise WindowError(
                f"{dag_id}: the window override [{window.start}, {window.end}) ends after the run's date {as_utc(end)}: "
                "its logs may not have settled yet"
            )
    else:
        window = lagged_window(end, lag_days=config.extract.lag_days, window_days=config.extract.window_days)
    return CycleSpec(dag_id, as_utc(logical_date or end), window, config, dry_run=dry_run)
