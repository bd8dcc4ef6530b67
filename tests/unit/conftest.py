"""Fixtures for the flywheel's unit tests: a throwaway DuckDB warehouse and a task oracle."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from flywheel.warehouse.duckdb import DuckDBWarehouse
from tests.helpers.log_rows import log_row
from tests.helpers.oracle import half_right_answers, right_answers, solve, wrong_answers


@pytest.fixture(scope="session")
def oracle() -> Callable[[str, str | None], str]:
    return solve


@pytest.fixture(scope="session")
def answer_fns() -> dict[str, Callable[[Sequence[tuple[str, str | None]]], list[str]]]:
    return {"right": right_answers, "wrong": wrong_answers, "half": half_right_answers}


@pytest.fixture
def wh(tmp_path: Path) -> DuckDBWarehouse:
    warehouse = DuckDBWarehouse(tmp_path / "wh" / "warehouse.duckdb", lock_timeout_s=5)
    warehouse.ensure_schema()
    return warehouse


@pytest.fixture(scope="session")
def make_log_row() -> Callable[..., dict[str, Any]]:
    return log_row
