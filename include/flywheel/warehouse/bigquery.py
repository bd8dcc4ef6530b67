"""The BigQuery backend, on `google-cloud-bigquery`.

It takes a client (in Airflow, from `BigQueryHook`, which holds the credentials) and a dataset.
Values are bound as query parameters. Bulk writes are Parquet load jobs into a staging table,
then one MERGE statement that deletes what the rows replace and inserts them, atomically:
``ON FALSE`` with ``WHEN NOT MATCHED BY SOURCE ... DELETE``, so that a batch holding two rows
with one key (a conflicting re-delivery, kept for validation to quarantine) lands as it is,
exactly as on DuckDB, where a keyed MERGE would refuse it.

Job ids: inside a task run (``job_prefix`` given), every job that changes data gets an id from
the run, its place in the task's sequence of writes, and a hash of what it does. A retried task
replays the same sequence, so it submits the same ids; BigQuery answers 409 for an id it knows,
and the warehouse re-attaches to that job (waits for it, or reads its result) instead of
running it twice. Reads get fresh ids: re-running one is harmless and must see current data.
`cancel` cancels the jobs in flight (the task was killed).

The google clients are imported inside the methods that use them: they are heavy, and only a
deployment on BigQuery needs them loaded (or installed).
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from flywheel.errors import WarehouseError
from flywheel.tables import TABLES
from flywheel.warehouse.base import Warehouse
from flywheel.warehouse.sql import (
    canonical_sql,
    check_identifier,
    conform_rows,
    prepare,
    sql_type,
)
from flywheel.warehouse.window import (
    DEFAULT_SKEW,
    NO_PUSHDOWN,
    Pushdown,
    conform_window_batch,
    rebatch,
    window_params,
)

log = logging.getLogger(__name__)
STAGING_TTL = timedelta(hours=6)


class BigQueryWarehouse(Warehouse):
    dialect = "bigquery"

    def __init__(
        self,
        client: Any,
        dataset: str,
        *,
        storage_client: Any = None,
        job_prefix: str | None = None,
        labels: dict[str, str] | None = None,
        write_batch_rows: int = 50000,
    ) -> None:
        self.client = client
        self.dataset = check_identifier(dataset)
        self.storage_client = storage_client
        self.job_prefix = job_prefix
        self.labels = labels or {}
        self.write_batch_rows = write_batch_rows
        self._writes = 0
        self._in_flight: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"BigQueryWarehouse({self.client.project}.{self.dataset})"

    def _table(self, table: str) -> str:
        return f"{self.client.project}.{self.dataset}.{check_identifier(table)}"

    # Jobs ----------------------------------------------------------------------------------
    def _job_id(self, kind: str, *content: bytes | str) -> str | None:
        """The id of the task's next write, or None (BigQuery picks one) outside a task run."""
        if self.job_prefix is None:
            return None
        self._writes += 1
        digest = hashlib.sha256()
        for part in content:
            digest.update(part.encode() if isinstance(part, str) else part)
            digest.update(b"\0")
        return f"{self.job_prefix}_{self._writes:04d}_{kind}_{digest.hexdigest()[:20]}"

    def _submit(self, start: Any, job_id: str | None) -> Any:
        """Start a job, or re-attach to the one an earlier try of the task started."""
        from google.api_core.exceptions import Conflict  # heavy, optional: see the docstring

        try:
            job = start(job_id)
        except Conflict:
            if job_id is None:
                raise
            log.info("job %s exists (an earlier try submitted it): re-attaching", job_id)
            job = self.client.get_job(job_id)
        self._in_flight[job.job_id] = job
        try:
            job.result()
        finally:
            self._in_flight.pop(job.job_id, None)
        return job

    def _query_job(self, sql: str, params: dict[str, Any] | None, job_id: str | None = None) -> Any:
        from google.cloud import bigquery  # heavy, optional: see the docstring

        text, values = prepare(sql, params, self.dialect)
        config = bigquery.QueryJobConfig(
            default_dataset=f"{self.client.project}.{self.dataset}",
            query_parameters=[_parameter(name, value) for name, value in values.items()],
            labels=self.labels,
        )
        return self._submit(lambda jid: self.client.query(text, job_config=config, job_id=jid, job_retry=None), job_id)

    def cancel(self) -> None:
        for job_id in list(self._in_flight):
            log.info("cancelling BigQuery job %s", job_id)
            self.client.cancel_job(job_id)

    # The interface ---------------------------------------------------------------------------
    def ensure_schema(self) -> None:
        """Create the dataset and missing tables (production_logs partitioned by event day and
        clustered on time, the others clustered on their keys); add columns a newer version of a
        table has (a migration)."""
        from google.cloud import bigquery  # heavy, optional: see the docstring

        dataset = f"{self.client.project}.{self.dataset}"
        self.client.create_dataset(bigquery.Dataset(dataset), exists_ok=True)
        existing = {t.table_id for t in self.client.list_tables(dataset)}
        for table, spec in TABLES.items():
            fields = [bigquery.SchemaField(f.name, sql_type(f.type, self.dialect)) for f in spec.schema]
            if table not in existing:
                definition = bigquery.Table(self._table(table), schema=fields)
                if table == "production_logs":
                    definition.time_partitioning = bigquery.TimePartitioning(field="timestamp")
                    definition.clustering_fields = ["timestamp", "request_id"]
                else:
                    definition.clustering_fields = list(spec.keys[:4])
                self.client.create_table(definition, exists_ok=True)
                continue
            have = {f.name for f in self.client.get_table(self._table(table)).schema}
            for f in spec.schema:
                if f.name not in have:
                    self._query_job(
                        f"ALTER TABLE `{self._table(table)}` ADD COLUMN IF NOT EXISTS `{f.name}` {sql_type(f.type, self.dialect)}",
                        None,
                    )

    def query(self, sql: str, params: dict[str, Any] | None = None) -> pa.Table:
        job = self._query_job(sql, params)
        return _normalise(job.result().to_arrow(bqstorage_client=self.storage_client, create_bqstorage_client=False))

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> None:
        text = prepare(sql, params, self.dialect)[0]
        self._query_job(sql, params, self._job_id("dml", text, repr(sorted((params or {}).items()))))

    def merge(self, table: str, rows: pa.Table) -> int:
        incoming = conform_rows(table, rows)
        spec = TABLES[table]
        keys = " AND ".join(f"s.`{k}` = t.`{k}`" for k in spec.keys)
        t_null = " OR ".join(f"t.`{k}` IS NULL" for k in spec.keys)
        s_null = " OR ".join(f"s.`{k}` IS NULL" for k in spec.keys)
        same = " AND ".join(f"s.`{c}` IS NOT DISTINCT FROM t.`{c}`" for c in spec.schema.names)
        # What DuckDB's two deletes remove: rows with the same keys, and a keyless row's exact copy.
        replaced = (
            f"EXISTS (SELECT 1 FROM {{stage}} s WHERE {keys}) "
            f"OR (({t_null}) AND EXISTS (SELECT 1 FROM {{stage}} s WHERE ({s_null}) AND {same}))"
        )
        self._stage_and_merge(table, incoming, replaced, {})
        return incoming.num_rows

    def replace_partition(self, table: str, where: dict[str, Any], rows: pa.Table) -> int:
        if not where:
            raise WarehouseError("replace_partition needs a non-empty partition filter")
        incoming = conform_rows(table, rows)
        replaced = " AND ".join(f"t.`{check_identifier(col)}` = @w{i}" for i, col in enumerate(where))
        self._stage_and_merge(table, incoming, replaced, {f"w{i}": v for i, v in enumerate(where.values())})
        return incoming.num_rows

    def _stage_and_merge(self, table: str, incoming: pa.Table, replaced: str, params: dict[str, Any]) -> None:
        """Load ``incoming`` into a staging table, then MERGE it in: delete the target rows that
        match ``replaced`` (SQL over ``t``, with ``{stage}`` for the staged rows), insert all."""
        from google.cloud import bigquery  # heavy, optional: see the docstring

        buffer = io.BytesIO()
        pq.write_table(_base64_binary(incoming), buffer)
        payload = buffer.getvalue()
        content = hashlib.sha256(payload).hexdigest()[:16]
        stage = self._table(f"_stage_{table}_{content}_{uuid.uuid4().hex[:8]}" if self.job_prefix is None else f"_stage_{table}_{content}")
        load_id = self._job_id("load", table, payload)
        schema = [
            bigquery.SchemaField(f.name, "STRING" if pa.types.is_binary(f.type) else sql_type(f.type, self.dialect))
            for f in TABLES[table].schema
        ]
        load_config = bigquery.LoadJobConfig(
            source_format=bigquery.SourceFormat.PARQUET,
            schema=schema,
            write_disposition=bigquery.WriteDisposition.WRITE_TRUNCATE,
            labels=self.labels,
        )
        self._submit(
            lambda jid: self.client.load_table_from_file(io.BytesIO(payload), stage, job_id=jid, job_config=load_config),
            load_id,
        )
        try:
            staged = self.client.get_table(stage)
            staged.expires = datetime.now(UTC) + STAGING_TTL  # a crash before the drop leaves no litter
            self.client.update_table(staged, ["expires"])
        except Exception:  # noqa: BLE001 - a re-attached retry may find it already dropped
            log.debug("staging table %s already gone", stage)
        cols = ", ".join(f"`{c}`" for c in TABLES[table].schema.names)
        decoded = ", ".join(
            f"FROM_BASE64(`{f.name}`) AS `{f.name}`" if pa.types.is_binary(f.type) else f"`{f.name}`"
            for f in TABLES[table].schema
        )
        statement = (
            f"MERGE `{self._table(table)}` t USING (SELECT {decoded} FROM `{stage}`) s ON FALSE "
            f"WHEN NOT MATCHED BY SOURCE AND ({replaced.format(stage=f'(SELECT {decoded} FROM `{stage}`)')}) THEN DELETE "
            f"WHEN NOT MATCHED THEN INSERT ({cols}) VALUES ({cols})"
        )
        # Written in BigQuery's dialect already (MERGE ... BY SOURCE has no DuckDB spelling).
        config = bigquery.QueryJobConfig(
            query_parameters=[_parameter(n, v) for n, v in params.items()], labels=self.labels
        )
        self._submit(
            lambda jid: self.client.query(statement, job_config=config, job_id=jid, job_retry=None),
            self._job_id("merge", table, statement, content, repr(sorted(params.items()))),
        )
        self.client.delete_table(stage, not_found_ok=True)

    def read_logs_window(
        self,
        start: datetime,
        end: datetime,
        *,
        batch_rows: int = 5000,
        max_skew: timedelta = DEFAULT_SKEW,
        pushdown: Pushdown = NO_PUSHDOWN,
    ) -> Iterator[pa.RecordBatch]:
        """Streams the result as Arrow record batches: through the Storage Read API where the
        warehouse has one (one ordered stream, since the query orders), else page by page."""
        job = self._query_job(*self.logs_query(canonical_sql("read_logs_window"), window_params(start, end, max_skew, pushdown)))
        rows = job.result(page_size=batch_rows)
        batches = rows.to_arrow_iterable(bqstorage_client=self.storage_client)
        for batch in rebatch(iter(batches), batch_rows):
            yield conform_window_batch(batch)


def _base64_binary(table: pa.Table) -> pa.Table:
    """Binary columns as base64 text, decoded by the MERGE: the emulator cannot load a Parquet
    BYTES column (it applies FROM_BASE64 to the raw bytes); base64 loads the same everywhere."""
    for i, f in enumerate(table.schema):
        if pa.types.is_binary(f.type):
            text = [None if v is None else base64.b64encode(v).decode() for v in table.column(i).to_pylist()]
            table = table.set_column(i, f.name, pa.array(text, pa.string()))
    return table


def _parameter(name: str, value: Any) -> Any:
    from google.cloud import bigquery  # heavy, optional: see the docstring

    if isinstance(value, list | tuple):
        kind = _scalar_type(value[0]) if value else "STRING"
        return bigquery.ArrayQueryParameter(name, kind, list(value))
    return bigquery.ScalarQueryParameter(name, _scalar_type(value), value)


def _scalar_type(value: Any) -> str:
    if isinstance(value, bool):
        return "BOOL"
    if isinstance(value, int):
        return "INT64"
    if isinstance(value, float):
        return "FLOAT64"
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise WarehouseError(f"timestamp parameter {value!r} has no time zone")
        return "TIMESTAMP"
    if isinstance(value, bytes):
        return "BYTES"
    return "STRING"


def _normalise(table: pa.Table) -> pa.Table:
    """Results as the flywheel's tables type them: BigQuery's NUMERIC counts become int64."""
    columns = [
        col.cast(pa.int64()) if pa.types.is_decimal(col.type) and col.type.scale == 0 else col for col in table.columns
    ]
    return pa.Table.from_arrays(columns, names=table.column_names)
