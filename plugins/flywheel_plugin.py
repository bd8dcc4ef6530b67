"""The flywheel's Airflow plugin: its dashboard, served by the API server and linked in the UI."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from flywheel_airflow.dashboard import create_app


class FlywheelPlugin(AirflowPlugin):
    name = "flywheel"
    fastapi_apps = [{"app": create_app(), "url_prefix": "/flywheel", "name": "Flywheel dashboard"}]
    external_views = [
        {"name": "Flywheel", "href": "flywheel/", "destination": "nav", "category": "browse", "url_route": "flywheel"}
    ]
