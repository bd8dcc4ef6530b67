"""The providers' BigQuery and Snowflake hooks, with what a local emulator needs (an API endpoint,
a protocol); `flywheel_airflow.hooks` opens them only for the backend the config names."""

from __future__ import annotations

from typing import Any

from airflow.providers.google.cloud.hooks.bigquery import BigQueryHook
from airflow.providers.snowflake.hooks.snowflake import SnowflakeHook


class FlywheelBigQueryHook(BigQueryHook):
    """`BigQueryHook`, plus an ``api_endpoint`` extra for a local emulator.

    With ``api_endpoint`` (and ``storage_endpoint``, the emulator's gRPC Storage Read API) in
    the connection's extras, the client talks to that endpoint with anonymous credentials;
    without them, this is the provider's hook unchanged (service account, ADC, impersonation).
    """

    def _emulator(self) -> str | None:
        return self._get_field("api_endpoint", None)

    def get_client(self, project_id: str | None = None, location: str | None = None) -> Any:  # type: ignore[override]
        if not self._emulator():
            return super().get_client(project_id=project_id or self.project_id, location=location)
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import bigquery

        return bigquery.Client(
            project=project_id or self._get_field("project", None),
            location=location,
            credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            client_options={"api_endpoint": self._emulator()},
        )

    def get_storage_client(self) -> Any:
        """A Storage Read API client: windowed reads stream Arrow through it instead of pages of
        JSON rows. None where the emulator has no Storage API endpoint."""
        from google.cloud import bigquery_storage_v1

        if not self._emulator():
            return bigquery_storage_v1.BigQueryReadClient(credentials=self.get_credentials())
        endpoint = self._get_field("storage_endpoint", None)
        if not endpoint:
            return None
        import grpc
        from google.cloud.bigquery_storage_v1.services.big_query_read.transports import (
            BigQueryReadGrpcTransport,
        )

        return bigquery_storage_v1.BigQueryReadClient(
            transport=BigQueryReadGrpcTransport(channel=grpc.insecure_channel(endpoint))
        )


class FlywheelSnowflakeHook(SnowflakeHook):
    """`SnowflakeHook`, plus ``protocol`` from the connection's extras (the provider already
    reads ``host`` and ``port`` there): ``http`` reaches a local fakesnow server."""

    def _get_conn_params(self) -> dict[str, Any]:  # type: ignore[override]
        params: dict[str, Any] = dict(super()._get_conn_params())
        protocol = self._get_field(self.get_connection(self.snowflake_conn_id).extra_dejson, "protocol")
        if protocol:
            params["protocol"] = protocol
        params["paramstyle"] = "qmark"
        return params
