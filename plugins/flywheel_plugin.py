"""The flywheel's Airflow plugin: its dashboard and the review UI, served by the API server
(``/flywheel/`` and ``/flywheel/review/``) and linked in the UI's Browse menu."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from flywheel_airflow.dashboard import create_app


class FlywheelPlugin(AirflowPlugin):
    name = "flywheel"
    fastapi_apps = [{"app": create_app(), "url_prefix": "/flywheel", "name": "Flywheel dashboard and review"}]
    external_views = [
        {"name": "Flywheel", "href": "flywheel/", "destination": "nav", "category": "browse", "url_route": "flywheel"},
        {"name": "Review", "href": "flywheel/review/", "destination": "nav", "category": "browse", "url_route": "flywheel-review"},
    ]
