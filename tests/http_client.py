"""HTTP helpers for a live sidecar process, shared by the test servers (conftest.Server and
redis_support.SidecarProcess): each sets `url`, `api_key`, `http_timeout_s` and `name`."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import requests

_UNSET: Any = object()


def check_body(uid: str, action: str, guid: str | None = None, target: str | None = None,
               context: Mapping[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """An /authorize body with only the fields given."""
    body: dict[str, Any] = {"uid": uid, "action": action}
    if guid is not None:
        body["guid"] = guid
    if target is not None:
        body["target"] = target
    if context is not None:
        body["context"] = dict(context)
    body.update(extra)
    return body


class ApiClient:
    url: str
    api_key: str | None
    http_timeout_s: float = 10.0
    name: str = "server"

    def request(self, method: str, path: str, *, apikey: Any = _UNSET, headers: Mapping[str, str] | None = None,
                **kwargs: Any) -> requests.Response:
        """One request on a fresh connection (nothing stale survives a restart), with the key."""
        key = self.api_key if apikey is _UNSET else apikey
        all_headers = {"Connection": "close"}
        if key is not None:
            all_headers["apikey"] = key
        all_headers.update(headers or {})
        kwargs.setdefault("timeout", self.http_timeout_s)
        return requests.request(method, self.url + path, headers=all_headers, **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, json: Any = None, **kwargs: Any) -> requests.Response:
        return self.request("POST", path, json=json, **kwargs)

    def put(self, path: str, json: Any = None, **kwargs: Any) -> requests.Response:
        return self.request("PUT", path, json=json, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("DELETE", path, **kwargs)

    def ok(self, method: str, path: str, json: Any = None, **kwargs: Any) -> dict[str, Any]:
        """A request that must succeed (2xx); returns the JSON body."""
        response = self.request(method, path, json=json, **kwargs)
        assert response.ok, f"{self.name}: {method} {path} {json!r} -> {response.status_code} {response.text}"
        return response.json()  # type: ignore[no-any-return]

    def authorize(self, uid: str, action: str, guid: str | None = None, target: str | None = None,
                  context: Mapping[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
        """POST /authorize; must answer 200; returns body["data"]."""
        body = check_body(uid, action, guid, target, context, **extra)
        response = self.post("/authorize", body)
        assert response.status_code == 200, \
            f"{self.name}: POST /authorize {body!r} -> {response.status_code} {response.text}"
        return response.json()["data"]  # type: ignore[no-any-return]
