"""A tiny Kubernetes API server on 127.0.0.1 for Helm to install into.

It answers discovery (``/version``, ``/api``, ``/apis``, ``/api/v1``, ``/apis/<group>/<version>``)
for the built-in kinds the chart uses and for every CRD under ``crds/``, answers reads of the
``existing`` objects (the harness gives it the ``kubernetes`` Endpoints) and 404 to others, and
accepts ``POST``s of objects, keeping what it was sent. With
``unique_names`` it also keeps names as the API server does: a second create of the same name
is refused (409 AlreadyExists) and ``metadata.generateName`` gets a random suffix. With
``serve_created`` it answers reads of the objects it created, as stored (off by default: the
harness installs the same release again and again, and Helm refuses objects that exist).
"""

from __future__ import annotations

import json
import random
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

KUBERNETES_VERSION = {"major": "1", "minor": "33", "gitVersion": "v1.33.0", "platform": "linux/amd64"}
# The API server's address as every cluster publishes it: the `kubernetes` Service's Endpoints.
API_SERVER_ENDPOINT = ("172.20.0.10", 6443)
EXISTING_OBJECTS: dict[str, dict[str, Any]] = {
    "/api/v1/namespaces/default/endpoints/kubernetes": {
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {"name": "kubernetes", "namespace": "default"},
        "subsets": [
            {
                "addresses": [{"ip": API_SERVER_ENDPOINT[0]}],
                "ports": [{"name": "https", "port": API_SERVER_ENDPOINT[1], "protocol": "TCP"}],
            }
        ],
    }
}

# group/version -> (plural, kind, namespaced) for the built-in kinds a chart may create.
BUILTIN_RESOURCES: dict[str, list[tuple[str, str, bool]]] = {
    "v1": [
        ("configmaps", "ConfigMap", True),
        ("secrets", "Secret", True),
        ("serviceaccounts", "ServiceAccount", True),
        ("services", "Service", True),
        ("pods", "Pod", True),
        ("endpoints", "Endpoints", True),
        ("namespaces", "Namespace", False),
    ],
    "policy/v1": [("poddisruptionbudgets", "PodDisruptionBudget", True)],
    "batch/v1": [("jobs", "Job", True), ("cronjobs", "CronJob", True)],
    "networking.k8s.io/v1": [("networkpolicies", "NetworkPolicy", True), ("ingresses", "Ingress", True)],
    "rbac.authorization.k8s.io/v1": [
        ("roles", "Role", True),
        ("rolebindings", "RoleBinding", True),
        ("clusterroles", "ClusterRole", False),
        ("clusterrolebindings", "ClusterRoleBinding", False),
    ],
}


def crd_resources(crd_dir: Path) -> dict[str, list[tuple[str, str, bool]]]:
    """group/version -> resources for every served version of every CRD file under ``crd_dir``."""
    found: dict[str, list[tuple[str, str, bool]]] = {}
    for path in sorted(crd_dir.rglob("*.yaml")):
        for doc in yaml.load_all(path.read_text(encoding="utf-8"), Loader=yaml.CSafeLoader):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            spec = doc["spec"]
            for version in spec["versions"]:
                if version.get("served", True):
                    entry = (spec["names"]["plural"], spec["names"]["kind"], spec["scope"] == "Namespaced")
                    found.setdefault(f"{spec['group']}/{version['name']}", []).append(entry)
    return found


@dataclass
class FakeKubeAPI:
    """The server's state: what it serves, and the objects it was sent."""

    resources: dict[str, list[tuple[str, str, bool]]]
    unique_names: bool = False
    serve_created: bool = False
    existing: dict[str, dict[str, Any]] = field(default_factory=dict)
    created: list[dict[str, Any]] = field(default_factory=list)
    names: set[tuple[str, str]] = field(default_factory=set)
    stored: dict[str, dict[str, Any]] = field(default_factory=dict)  # with serve_created: path -> object
    requests: list[tuple[str, str]] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        """Base URL, for a kubeconfig."""
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def kubeconfig(self, namespace: str = "default") -> str:
        """A kubeconfig (YAML) that points at this server."""
        return yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
                "users": [{"name": "fake", "user": {"token": "not-a-secret"}}],
                "contexts": [
                    {"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": namespace}}
                ],
                "current-context": "fake",
            }
        )

    def take_created(self) -> list[dict[str, Any]]:
        """The objects POSTed since the last call."""
        with self._lock:
            created, self.created = self.created, []
        return created

    def start(self) -> FakeKubeAPI:
        """Serve on a free port of 127.0.0.1 in a daemon thread."""
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        threading.Thread(target=self._server.serve_forever, name="fake-kube-api", daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    # -- answers -------------------------------------------------------------------------------

    def discovery(self, path: str) -> dict[str, Any] | None:
        """The discovery document at ``path``, or None."""
        if path == "/version":
            return KUBERNETES_VERSION
        if path == "/api":
            return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
        if path == "/apis":
            groups: dict[str, list[str]] = {}
            for group_version in self.resources:
                if "/" in group_version:
                    group, version = group_version.split("/")
                    groups.setdefault(group, []).append(version)
            return {
                "kind": "APIGroupList",
                "apiVersion": "v1",
                "groups": [
                    {
                        "name": group,
                        "versions": [{"groupVersion": f"{group}/{v}", "version": v} for v in versions],
                        "preferredVersion": {
                            "groupVersion": f"{group}/{versions[0]}",
                            "version": versions[0],
                        },
                    }
                    for group, versions in sorted(groups.items())
                ],
            }
        group_version = path.removeprefix("/api/").removeprefix("/apis/")
        if path.startswith(("/api/", "/apis/")) and group_version in self.resources:
            return {
                "kind": "APIResourceList",
                "apiVersion": "v1",
                "groupVersion": group_version,
                "resources": [
                    {
                        "name": plural,
                        "singularName": kind.lower(),
                        "namespaced": namespaced,
                        "kind": kind,
                        "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
                    }
                    for plural, kind, namespaced in self.resources[group_version]
                ],
            }
        return None

    def create(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """Accept a POST of ``body`` to the collection at ``path``, as the API server would."""
        parts = path.strip("/").split("/")
        group_version = parts[1] if parts[0] == "api" else "/".join(parts[1:3])
        plural = parts[-1]
        kinds = {p: k for p, k, _ in self.resources.get(group_version, [])}
        if kinds.get(plural) != body.get("kind") or body.get("apiVersion") != group_version:
            return 400, _status(
                400, "BadRequest", f"{body.get('apiVersion')}/{body.get('kind')} posted to {path}"
            )
        stored = json.loads(json.dumps(body))
        metadata = stored.setdefault("metadata", {})
        if "namespaces" in parts:
            metadata["namespace"] = parts[parts.index("namespaces") + 1]
        if self.unique_names:
            if not metadata.get("name") and metadata.get("generateName"):
                # The API server's suffix: 5 characters of an alphabet without vowels or look-alikes.
                suffix = "".join(random.choices("bcdfghjklmnpqrstvwxz2456789", k=5))  # noqa: S311
                metadata["name"] = metadata["generateName"] + suffix
            key = (path, str(metadata.get("name")))
            with self._lock:
                if key in self.names:
                    return 409, _status(409, "AlreadyExists", f"{plural} {key[1]!r} already exists")
                self.names.add(key)
        metadata.update(
            uid=f"uid-{len(self.created)}", resourceVersion="1", creationTimestamp="2026-01-01T00:00:00Z"
        )
        with self._lock:
            self.created.append(body)
            if self.serve_created:
                self.stored[f"{path.rstrip('/')}/{metadata.get('name')}"] = stored
        return 201, stored


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "reason": reason,
        "code": code,
        "message": message,
    }


def _handler_for(api: FakeKubeAPI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_: object) -> None:  # quiet
            return

        def _reply(self, code: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            api.requests.append(("GET", path))
            document = api.discovery(path) or api.existing.get(path) or api.stored.get(path)
            if document is None:
                self._reply(404, _status(404, "NotFound", f"{path} not found"))
            else:
                self._reply(200, document)

        def do_POST(self) -> None:
            path = self.path.split("?")[0]
            api.requests.append(("POST", path))
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
            self._reply(*api.create(path, body))

        def _refuse(self) -> None:
            path = self.path.split("?")[0]
            api.requests.append((self.command, path))
            self._reply(
                405, _status(405, "MethodNotAllowed", f"{self.command} {path}: only create is served")
            )

        do_PUT = do_PATCH = do_DELETE = _refuse  # noqa: N815 - BaseHTTPRequestHandler's names

    return Handler
