"""An `airflow api-server` on a free loopback port for the tests that need the real one (the
dashboard, the review UI): started, waited for, and stopped with its log kept."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def api_server(env: dict[str, str], root: Path, *, user: str, role: str = "viewer") -> Iterator[dict[str, str]]:
    """Yield ``{"base": url, "password": ...}`` for ``user``, whose password the server's simple
    auth manager generates at start (so none is written anywhere in the project)."""
    import httpx

    port = free_port()
    env = env | {
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{user}:{role}",
        "AIRFLOW__CORE__LAZY_LOAD_PLUGINS": "False",
    }
    airflow = str(Path(sys.executable).with_name("airflow"))
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True)
    log_path = root / "api-server.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen([airflow, "api-server", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 180
            while True:
                try:
                    if httpx.get(f"{base}/api/v2/monitor/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert proc.poll() is None, log_path.read_text()[-3000:]
                assert time.monotonic() < deadline, "api-server did not start"
                time.sleep(1)
            airflow_home = Path(env["AIRFLOW_HOME"])
            passwords = json.loads((airflow_home / "simple_auth_manager_passwords.json.generated").read_text())
            yield {"base": base, "password": passwords[user]}
        finally:
            proc.terminate()
            proc.wait(timeout=30)
