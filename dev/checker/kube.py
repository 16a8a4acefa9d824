"""A minimal Kubernetes REST client for the fault suite: kubeconfig (client certificate or
token) -> HTTPS requests with keep-alive, one connection per thread.

Deliberately independent of kubewire: it shares no code with the crate, so the checker
lists the cluster through a different path than the daemon it judges.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import ssl
import tempfile
import threading
import time
import urllib.parse

import yaml


class ApiError(Exception):
    def __init__(self, status: int, body: str, method: str, path: str):
        super().__init__(f"{method} {path}: HTTP {status}: {body[:300]}")
        self.status = status
        self.body = body


class Kube:
    """One cluster. Thread-safe: every thread gets its own connection."""

    def __init__(self, kubeconfig: str | None = None, timeout: float = 10.0):
        path = kubeconfig or os.environ["KUBECONFIG"]
        with open(path) as f:
            cfg = yaml.safe_load(f)
        ctx_name = cfg.get("current-context")
        ctx = next(c["context"] for c in cfg["contexts"] if c["name"] == ctx_name)
        cluster = next(c["cluster"] for c in cfg["clusters"] if c["name"] == ctx["cluster"])
        user = next(u["user"] for u in cfg["users"] if u["name"] == ctx["user"])
        url = urllib.parse.urlparse(cluster["server"])
        self.host, self.port = url.hostname, url.port or 443
        self.timeout = timeout
        self._tmp = tempfile.mkdtemp(prefix="kwcheck-")
        ctx_ssl = ssl.create_default_context()
        if "certificate-authority-data" in cluster:
            ctx_ssl.load_verify_locations(
                cadata=base64.b64decode(cluster["certificate-authority-data"]).decode()
            )
        elif "certificate-authority" in cluster:
            ctx_ssl.load_verify_locations(cafile=cluster["certificate-authority"])
        self.headers = {"Accept": "application/json"}
        cert = self._material(user, "client-certificate")
        key = self._material(user, "client-key")
        if cert and key:
            ctx_ssl.load_cert_chain(cert, key)
        if "token" in user:
            self.headers["Authorization"] = f"Bearer {user['token']}"
        self.ssl = ctx_ssl
        self._local = threading.local()

    def _material(self, user: dict, name: str) -> str | None:
        if f"{name}-data" in user:
            p = os.path.join(self._tmp, name)
            with open(p, "wb") as f:
                f.write(base64.b64decode(user[f"{name}-data"]))
            os.chmod(p, 0o600)
            return p
        return user.get(name)

    def _conn(self, fresh: bool = False) -> http.client.HTTPSConnection:
        c = getattr(self._local, "conn", None)
        if c is None or fresh:
            if c is not None:
                c.close()
            c = http.client.HTTPSConnection(
                self.host, self.port, context=self.ssl, timeout=self.timeout
            )
            self._local.conn = c
        return c

    def request(self, method: str, path: str, body=None, content_type="application/json"):
        """One request; returns the decoded JSON body. Raises ApiError on HTTP >= 400 and
        OSError / http.client errors on connection problems (after one reconnect)."""
        data = None if body is None else json.dumps(body).encode()
        headers = dict(self.headers)
        if data is not None:
            headers["Content-Type"] = content_type
        for attempt in range(2):
            c = self._conn(fresh=attempt > 0)
            try:
                c.request(method, path, body=data, headers=headers)
                r = c.getresponse()
                text = r.read().decode()
                break
            except (OSError, http.client.HTTPException):
                self._conn(fresh=True)
                if attempt == 1:
                    raise
        if r.status >= 400:
            raise ApiError(r.status, text, method, path)
        return json.loads(text) if text else None

    def retrying(self, method: str, path: str, body=None, deadline_s: float = 120.0, **kw):
        """`request`, retried on connection errors and 5xx/429 until `deadline_s` (the API
        server may be stopped or restarting during a fault)."""
        end = time.monotonic() + deadline_s
        delay = 0.1
        while True:
            try:
                return self.request(method, path, body, **kw)
            except ApiError as e:
                if e.status < 500 and e.status != 429 or time.monotonic() > end:
                    raise
            except (OSError, http.client.HTTPException):
                if time.monotonic() > end:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 2.0)

    def list_all(self, path: str) -> tuple[list[dict], str]:
        """Paginated list: (items with apiVersion/kind filled in, list resourceVersion)."""
        items, cont, rv = [], None, ""
        while True:
            q = {"limit": "500"}
            if cont:
                q["continue"] = cont
            page = self.retrying("GET", f"{path}?{urllib.parse.urlencode(q)}")
            kind = page.get("kind", "")
            kind = kind[: -len("List")] if kind.endswith("List") else kind
            for it in page.get("items", []):
                it.setdefault("apiVersion", page.get("apiVersion"))
                it.setdefault("kind", kind)
                items.append(it)
            cont = page.get("metadata", {}).get("continue")
            rv = page.get("metadata", {}).get("resourceVersion", rv)
            if not cont:
                return items, rv


def resource_path(group: str, version: str, plural: str, namespace: str | None, name=None):
    base = f"/api/{version}" if group in ("", "core") else f"/apis/{group}/{version}"
    if namespace:
        base += f"/namespaces/{namespace}"
    base += f"/{plural}"
    if name:
        base += f"/{urllib.parse.quote(name, safe='')}"
    return base
