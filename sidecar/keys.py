"""API keys: a full-access key for management and an optional authorize-only key.

With no key configured, a full-access key is generated at first start and kept in
<data-dir>/apikeys.json, readable by its owner alone. Keys are compared in constant time.
"""
from __future__ import annotations

import hmac
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

FULL_ACCESS = "fullAccess"
AUTH_ONLY = "authOnly"
KEY_FILE = "apikeys.json"


@dataclass(frozen=True)
class ApiKey:
    name: str
    key: str
    scope: str


class KeyRing:
    def __init__(self, keys: list[ApiKey], source: str) -> None:
        self.keys = keys
        self.source = source

    def find(self, presented: str) -> ApiKey | None:
        found = None
        for key in self.keys:  # check every key so timing does not tell which matched
            if hmac.compare_digest(key.key.encode(), presented.encode()):
                found = key
        return found


def load_keys(data_dir: Path, api_key: str | None, authorize_key: str | None) -> KeyRing:
    """Configured keys win; otherwise the data folder's key file, created on first start."""
    extra = [ApiKey("authorize", authorize_key, AUTH_ONLY)] if authorize_key else []
    if api_key:
        return KeyRing([ApiKey("admin", api_key, FULL_ACCESS), *extra], "CHATAUTHZ_API_KEY")
    path = data_dir / KEY_FILE
    if not path.exists():
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump([{"name": "admin", "key": secrets.token_urlsafe(32), "scope": FULL_ACCESS}], handle)
    stored = [ApiKey(**entry) for entry in json.loads(path.read_text())]
    return KeyRing([*stored, *extra], str(path))
