"""The flywheel's Airflow plugin: its dashboard and the review UI, served by the API server
(``/flywheel/`` and ``/flywheel/review/``) and linked in the UI's Browse menu; and a guard on the
API server that refuses a cycle's trigger or backfill whose conf names no param
(`flywheel_airflow.conf_guard`)."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from flywheel_airflow.conf_guard import RunConfGuard
from flywheel_airflow.dashboard import create_app


class FlywheelPlugin(AirflowPlugin):
    name = "flywheel"
    fastapi_apps = [{"app": create_app(), "url_prefix": "/flywheel", "name": "Flywheel dashboard and review"}]
    fastapi_root_middlewares = [{"middleware": RunConfGuard, "name": "Refuse unknown run params of the cycle DAGs"}]
    external_views = [
        {"name": "Flywheel", "href": "flywheel/", "destination": "nav", "category": "browse", "url_route": "flywheel"},
        {"name": "Review", "href": "flywheel/review/", "destination": "nav", "category": "browse", "url_route": "flywheel-review"},
    ]
