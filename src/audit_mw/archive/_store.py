"""Where an archive lives: a local folder or any fsspec URL (``s3://``, ``gs://``, ``az://``,
``file://``). The optional dependencies are imported here, when an archive is used."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from audit_mw.errors import ArchiveError

EXTRA_HINT = "install the archive extra: pip install 'audit-mw[archive]'"


def require(module: str) -> Any:
    """Import an optional dependency of the archive, or say which extra provides it."""
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as exc:
        name = module.split(".", maxsplit=1)[0]
        raise ArchiveError(f"the archive needs {name}: {EXTRA_HINT}") from exc


@dataclass(frozen=True)
class Store:
    """An archive root on a filesystem; paths inside it are ``/``-separated."""

    fs: Any
    root: str
    url: str

    @classmethod
    def open(cls, url: str, storage_options: Mapping[str, Any] | None = None) -> Store:
        fsspec_core = require("fsspec.core")
        try:
            fs, root = fsspec_core.url_to_fs(url, **dict(storage_options or {}))
        except (ValueError, ImportError) as exc:
            raise ArchiveError(f"cannot open archive {url!r}: {exc}") from exc
        return cls(fs, str(root).rstrip("/"), url)

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def url_of(self, *parts: str) -> str:
        return "/".join([self.url.rstrip("/"), *parts])

    def exists(self, *parts: str) -> bool:
        try:
            return bool(self.fs.exists(self.path(*parts)))
        except OSError as exc:
            raise ArchiveError(f"cannot reach archive {self.url}: {exc}") from exc

    def read_json(self, *parts: str) -> tuple[dict[str, Any] | None, str]:
        """The JSON object at ``parts`` (``None`` when absent or not an object), and the
        SHA-256 of its bytes."""
        try:
            with self.fs.open(self.path(*parts), "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            return None, ""
        except OSError as exc:
            raise ArchiveError(f"cannot read {self.url_of(*parts)}: {exc}") from exc
        try:
            found = json.loads(data)
        except ValueError:
            found = None
        return (found if isinstance(found, dict) else None), hashlib.sha256(data).hexdigest()

    def write_bytes(self, data: bytes, *parts: str) -> None:
        try:
            if len(parts) > 1:
                self.fs.makedirs(self.path(*parts[:-1]), exist_ok=True)
            with self.fs.open(self.path(*parts), "wb") as handle:
                handle.write(data)
        except OSError as exc:
            raise ArchiveError(f"cannot write {self.url_of(*parts)}: {exc}") from exc

    def put_file(self, local: str, *parts: str) -> None:
        try:
            self.fs.makedirs(self.path(*parts[:-1]), exist_ok=True)
            self.fs.put_file(local, self.path(*parts))
        except OSError as exc:
            raise ArchiveError(f"cannot write {self.url_of(*parts)}: {exc}") from exc

    def get_file(self, local: str, *parts: str) -> bool:
        """Copy a file here; ``False`` when it is absent."""
        try:
            self.fs.get_file(self.path(*parts), local)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise ArchiveError(f"cannot read {self.url_of(*parts)}: {exc}") from exc
        return True

    def month_dirs(self) -> list[str]:
        """The ``year=YYYY/month=MM`` folders present, sorted."""
        try:
            found = self.fs.glob(self.path("year=*", "month=*"))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise ArchiveError(f"cannot list archive {self.url}: {exc}") from exc
        prefix = len(self.root) + 1
        return sorted(str(p)[prefix:] if str(p).startswith(self.root) else str(p)
                      for p in found)


def dumps(obj: Any) -> bytes:
    """A manifest as written: indented JSON (readable), ASCII."""
    return json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=True).encode() + b"\n"
