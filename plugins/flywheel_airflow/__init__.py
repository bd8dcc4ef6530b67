"""Airflow extensions for the flywheel: thin operators and hooks over `include/flywheel`.

Nothing here holds business logic; each operator resolves the run's cycle and configuration,
opens the warehouse through the hook, and calls one stage of `flywheel.cycle`.

Importing this package makes the artefact store open buckets through Airflow: an
``artefacts.conn_id`` is then an Airflow connection, read by `ObjectStoragePath`.
"""

from airflow.sdk import ObjectStoragePath

from flywheel import artefacts


def _airflow_root(location: str, conn_id: str | None) -> ObjectStoragePath:
    return ObjectStoragePath(location, conn_id=conn_id)


artefacts.use_root_opener(_airflow_root)
