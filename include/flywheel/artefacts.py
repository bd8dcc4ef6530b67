"""The artefact store: datasets, adapters, base models and reports, addressed by
fsspec paths (`upath.UPath`) so that workers on different machines share them.

With a local root (the default, or ``file://``) the store is the folder itself: nothing is
copied, a reference is the local path, exactly as before object storage. With an ``s3://`` or
``gs://`` root every stage still reads and writes a local working copy (``artefacts.cache_dir``,
laid out like the store) and the store moves whole artefacts between it and the bucket:

- `publish` uploads a folder or file under its key, then writes ``<key>.manifest.json`` (each
  file's size and sha256) last: a reader never takes a half-written upload for a complete one.
  Publishing what the manifest already describes uploads nothing.
- `fetch` reads the manifest, keeps the local copy when every hash matches, and otherwise
  downloads into a temporary folder, verifies it and moves it into place.

References kept in the warehouse (the registry's ``adapter_path``, a dataset's ``path``) are
the store's URIs, which any worker resolves with `local`. Credentials come only from the Airflow
connection ``artefacts.conn_id`` (or the cloud SDK's own environment), never from this config.
The core knows no Airflow: the Airflow layer (`flywheel_airflow`) installs an opener that reads
the connection (`use_root_opener`); outside Airflow a bucket is opened with the SDK's own
credentials, and a ``conn_id`` is an error there.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from upath import UPath

from flywheel.config import REMOTE_SCHEMES, FlywheelConfig, split_root
from flywheel.errors import ConfigError, FlywheelError

MANIFEST_SUFFIX = ".manifest.json"
_CHUNK = 1 << 20


class ArtefactError(FlywheelError):
    """An artefact is missing, incomplete or does not match its manifest."""


# Opens a bucket root (``location``, ``conn_id``) as a path; the Airflow layer installs one that
# takes credentials from the Airflow connection.
RootOpener = Callable[[str, str | None], UPath]


def _sdk_root(location: str, conn_id: str | None) -> UPath:
    if conn_id:
        raise ConfigError(
            f"artefacts.conn_id {conn_id!r} names an Airflow connection, which only an Airflow task can "
            "read; outside Airflow leave it empty and let the cloud SDK find its credentials"
        )
    return UPath(location)


_open_root: RootOpener = _sdk_root


def use_root_opener(opener: RootOpener) -> None:
    """How every store opens its bucket from now on (the Airflow layer passes its connections)."""
    global _open_root
    _open_root = opener


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def manifest_of(local: Path) -> dict[str, Any]:
    """Every file of a local artefact (a folder, or one file) with its size and sha256."""
    if local.is_file():
        files = {"": local}
    elif local.is_dir():
        files = {p.relative_to(local).as_posix(): p for p in sorted(local.rglob("*")) if p.is_file()}
    else:
        raise ArtefactError(f"{local}: nothing to publish (no such file or folder)")
    return {
        "kind": "file" if local.is_file() else "dir",
        "files": {name: {"size": p.stat().st_size, "sha256": _sha256(p)} for name, p in files.items()},
    }


def _matches(local: Path, manifest: dict[str, Any]) -> bool:
    """The local copy holds exactly the manifest's files, byte for byte."""
    try:
        return manifest_of(local) == manifest
    except ArtefactError:
        return False


class ArtefactStore:
    """The store ``config.artefacts`` names; cheap to build, so each task builds its own."""

    def __init__(self, config: FlywheelConfig) -> None:
        self.scheme, self.location = split_root(config.artefacts.root)
        self.conn_id = config.artefacts.conn_id
        # Local root: the root itself. Remote root: this machine's working copy (the cache).
        self.local_root = config.artefacts_root

    @property
    def remote(self) -> bool:
        return bool(self.scheme)

    def _root(self) -> UPath:
        try:
            return _open_root(self.location, self.conn_id)
        except (ValueError, ImportError) as e:  # no filesystem registered for the scheme
            raise ConfigError(
                f"artefacts.root {self.location!r}: cannot open {self.scheme}:// ({e}); install "
                f"{REMOTE_SCHEMES[self.scheme]}"
            ) from e

    def key(self, local: Path) -> str:
        """The key of a local artefact: its path under the local root."""
        try:
            return Path(local).resolve().relative_to(self.local_root.resolve()).as_posix()
        except ValueError:
            raise ArtefactError(f"{local} is not under the artefact root {self.local_root}") from None

    def uri(self, local: Path) -> str:
        """The stable reference to store (registry, datasets table): a URI, or the local path."""
        return f"{self.location}/{self.key(local)}" if self.remote else str(local)

    def publish(self, local: Path, *, prune: bool = True) -> str:
        """Upload a local artefact under its key (a no-op when local); returns its reference.

        ``prune`` removes the files a changed artefact no longer has. A key that several
        workers write in part (the Data Docs site: each worker holds only its own runs' pages)
        is published with ``prune=False``, so no worker deletes another's files."""
        if not self.remote:
            return str(local)
        key = self.key(local)
        manifest = {"key": key, **manifest_of(local)}
        target = self._root() / key
        marker = self._root() / (key + MANIFEST_SUFFIX)
        previous = self._read_manifest(marker)
        if previous == manifest:
            return self.uri(local)
        if previous is not None:
            marker.unlink()  # from here on, readers see the key as incomplete, not as the old one
        there = previous["files"] if previous and previous.get("kind") == manifest["kind"] else {}
        for name, meta in manifest["files"].items():
            if there.get(name) == meta:
                continue  # these bytes are already there
            src = local / name if name else local
            dst = target / name if name else target
            with src.open("rb") as fin, dst.open("wb") as fout:
                shutil.copyfileobj(fin, fout, _CHUNK)
        gone = set(there) - set(manifest["files"]) if prune else set()  # files the new version no longer has
        for name in sorted(gone):
            stale = target / name if name else target
            if stale.exists():
                stale.unlink()
        marker.write_text(json.dumps(manifest, sort_keys=True))
        return self.uri(local)

    def _read_manifest(self, marker: UPath) -> dict[str, Any] | None:
        if not marker.exists():
            return None
        try:
            return dict(json.loads(marker.read_text()))
        except ValueError as e:
            raise ArtefactError(f"{marker}: the manifest is not valid JSON ({e}); republish the artefact") from e

    def published(self, local: Path) -> bool:
        """Whether the artefact is there to fetch (locally: whether the path exists)."""
        if not self.remote:
            return Path(local).exists()
        return self._root().joinpath(self.key(local) + MANIFEST_SUFFIX).exists()

    def published_in(self, local_dir: Path) -> list[str]:
        """The names of the artefacts published directly under a local folder's key (checkpoints
        a training on another machine left, say); none for a local store."""
        if not self.remote:
            return []
        folder = self._root() / self.key(local_dir)
        # Listings are cached per filesystem instance (fsspec), and this one is asked again and
        # again while another machine writes under it: always ask the bucket.
        folder.fs.invalidate_cache(folder.path)
        if not folder.exists():
            return []
        return sorted(p.name[: -len(MANIFEST_SUFFIX)] for p in folder.iterdir() if p.name.endswith(MANIFEST_SUFFIX))

    def fetch(self, local: Path) -> Path:
        """Make the published artefact present, verified, at its local path; returns that path.
        Locally this is the path itself, untouched."""
        if not self.remote:
            return Path(local)
        key = self.key(local)
        marker = self._root() / (key + MANIFEST_SUFFIX)
        manifest = self._read_manifest(marker)
        if manifest is None:
            raise ArtefactError(
                f"{self.location}/{key}: not published (no {key}{MANIFEST_SUFFIX}); the task that "
                "writes it has not finished, or its upload was cut short"
            )
        expected = {k: v for k, v in manifest.items() if k != "key"}
        local = Path(local)
        if _matches(local, expected):
            return local
        tmp = local.with_name(f"{local.name}.fetch-{uuid.uuid4().hex[:8]}")
        try:
            source = self._root() / key
            for name, meta in expected["files"].items():
                dst = tmp / name if name else tmp
                dst.parent.mkdir(parents=True, exist_ok=True)
                with (source / name if name else source).open("rb") as fin, dst.open("wb") as fout:
                    shutil.copyfileobj(fin, fout, _CHUNK)
                if dst.stat().st_size != meta["size"] or _sha256(dst) != meta["sha256"]:
                    raise ArtefactError(
                        f"{self.location}/{key}/{name}: the downloaded file does not match its manifest "
                        f"(size {dst.stat().st_size} vs {meta['size']}, or sha256); the store holds a "
                        "partial or altered copy: republish it"
                    )
            if expected["kind"] == "dir":
                tmp.mkdir(parents=True, exist_ok=True)  # an empty folder is an artefact too
            if local.is_dir():
                shutil.rmtree(local)
            elif local.exists():
                local.unlink()
            local.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, local)
        finally:
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            elif tmp.exists():
                tmp.unlink()
        return local

    def local(self, ref: str | None) -> str | None:
        """A stored reference as something transformers and peft can open: a URI of this store
        is fetched to its local path; a local path or a hub name is returned as it is."""
        if not ref or not self.remote or not ref.startswith(self.location + "/"):
            if ref and urlsplit(ref).scheme in REMOTE_SCHEMES:
                raise ArtefactError(f"{ref}: not in this deployment's artefact store {self.location or self.local_root}")
            return ref
        return str(self.fetch(self.local_root / ref[len(self.location) + 1 :]))
