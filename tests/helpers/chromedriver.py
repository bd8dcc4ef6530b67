"""A minimal W3C WebDriver client over httpx, for the browser tests.

ChromeDriver speaks the W3C WebDriver protocol over HTTP; these few calls (navigate, find,
type, click, keys, read) are all the tests need, without another dependency.
"""

from __future__ import annotations

import subprocess
import time
from typing import Any

import httpx

ELEMENT = "element-6066-11e4-a52e-4f735466cecf"
ESCAPE = "\ue00c"
# Debian's Chromium, headless, with nothing reaching out to the network on its own.
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,900"]  # fmt: skip


class Browser:
    def __init__(self, driver_port: int, user_data_dir: str) -> None:
        self.driver = subprocess.Popen(["chromedriver", f"--port={driver_port}"], stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)  # fmt: skip
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{driver_port}", timeout=60)
        for _ in range(100):
            try:
                if self.http.get("/status").json()["value"]["ready"]:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
            "binary": "/usr/bin/chromium", "args": [*CHROMIUM_ARGS, f"--user-data-dir={user_data_dir}"]}}}}  # fmt: skip
        self.session = self._call("POST", "/session", caps)["sessionId"]

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        resp = self.http.request(method, path, json=body)
        value = resp.json().get("value")
        if resp.status_code >= 400:
            raise RuntimeError(f"webdriver {method} {path}: {value}")
        return value

    def _s(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        return self._call(method, f"/session/{self.session}{path}", body if body is not None else ({} if method == "POST" else None))

    def get(self, url: str) -> None:
        self._s("POST", "/url", {"url": url})

    @property
    def url(self) -> str:
        return self._s("GET", "/url")

    def find(self, css: str, timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self._s("POST", "/element", {"using": "css selector", "value": css})[ELEMENT]
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def _on_element(self, css: str, action: str, body: dict[str, Any] | None = None, timeout: float = 20) -> None:
        """``action`` on the element, once it can take it: a dialog's field is in the page before
        its opening animation lets it take keys or clicks ("not interactable"), and a page that
        re-renders replaces the element ("stale")."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._s("POST", f"/element/{self.find(css, timeout)}/{action}", body)
                return
            except RuntimeError as exc:
                if not any(m in str(exc) for m in ("not interactable", "stale element", "click intercepted")) or time.monotonic() > deadline:
                    raise
                time.sleep(0.3)

    def type(self, css: str, text: str) -> None:
        self._on_element(css, "value", {"text": text})

    def click(self, css: str) -> None:
        self._on_element(css, "click")

    def text(self, css: str, timeout: float = 20) -> str:
        """The element's text; found again when the page was replaced under it (a reload)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self._s("GET", f"/element/{self.find(css, timeout)}/text")
            except RuntimeError as exc:
                if "stale element" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def keys(self, *keys: str) -> None:
        """Press and release each key in turn, on whatever has the focus (the page)."""
        actions = [a for k in keys for a in ({"type": "keyDown", "value": k}, {"type": "keyUp", "value": k})]
        self._s("POST", "/actions", {"actions": [{"type": "key", "id": "keyboard", "actions": actions}]})

    def script(self, js: str) -> Any:
        return self._s("POST", "/execute/sync", {"script": js, "args": []})

    def wait_until(self, js: str, what: str, timeout: float = 30) -> Any:
        """The value of ``js`` (a script that returns) once it is truthy; fails naming ``what``."""
        deadline = time.monotonic() + timeout
        while not (value := self.script(js)):
            if time.monotonic() > deadline:
                raise AssertionError(f"the page never showed {what} (at {self.url})")
            time.sleep(0.3)
        return value

    def click_button(self, text: str, within: str = "body", timeout: float = 30) -> None:
        """Click the button whose text is ``text`` inside the first ``within`` element, once it is there."""
        find = (f"(() => {{ const root = document.querySelector({within!r}); return root && Array.from("
                f"root.querySelectorAll('button')).find(b => b.innerText.trim() === {text!r}); }})()")  # fmt: skip
        self.wait_until(f"return !!{find}", f"a {text!r} button", timeout)
        self.script(f"{find}.click()")

    def screenshot(self) -> bytes:
        import base64

        return base64.b64decode(self._s("GET", "/screenshot"))

    def log_in(self, base: str, user: str, password: str, then: str) -> None:
        """Log in through Airflow's own login page, then open ``then`` (a URL)."""
        self.get(f"{base}/auth/login/?next={then}")
        self.type("input[name=username]", user)
        self.type("input[name=password]", password)
        self.click("button[type=submit]")
        deadline = time.monotonic() + 30
        while "/auth/login" in self.url and time.monotonic() < deadline:
            time.sleep(0.3)
        self.get(then)

    def quit(self) -> None:
        try:
            self._s("DELETE", "")
        finally:
            self.driver.terminate()
            self.driver.wait(timeout=20)
