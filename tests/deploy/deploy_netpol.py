"""A small NetworkPolicy evaluator: would these policies let this connection through?

It implements the semantics of networking.k8s.io/v1 NetworkPolicy that the chart relies on, for
policies that all live in one namespace (the release's):

- a pod selected by no policy of a direction is open in that direction;
- a pod selected by one or more policies of a direction admits a connection when any rule of any
  of them matches both the peer (podSelector / namespaceSelector / ipBlock; no peers: anyone) and
  the port (number, endPort range and protocol; no ports: every port);
- a connection needs the source's egress and the destination's ingress to allow it.

Peers are pods (labels, namespace, namespace labels, an IP) or addresses outside the cluster.
Traffic is judged as a CNI sees it after a Service's address translation (pod IP and target
port), which is how NetworkPolicies are enforced.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from deploy_manifests import NAMESPACE, Release, rayjob_spec_of

Obj = dict[str, Any]


@dataclass(frozen=True)
class Pod:
    """A pod: its labels, its namespace (and that namespace's labels) and its address."""

    labels: Mapping[str, str]
    namespace: str = NAMESPACE
    ip: str = "10.244.1.10"
    extra_namespace_labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def namespace_labels(self) -> dict[str, str]:
        """Kubernetes labels every namespace with its name (kubernetes.io/metadata.name)."""
        return {"kubernetes.io/metadata.name": self.namespace, **self.extra_namespace_labels}


@dataclass(frozen=True)
class Address:
    """An address outside the cluster's pods (a cloud endpoint, a node, the API server)."""

    ip: str


Endpoint = Pod | Address


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A LabelSelector against labels; {} selects everything."""
    selector = selector or {}
    if any(labels.get(key) != value for key, value in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        present = key in labels
        if operator == "In" and not (present and labels[key] in values):
            return False
        if operator == "NotIn" and present and labels[key] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


def _in_block(ip: str, block: Mapping[str, Any]) -> bool:
    address = ipaddress.ip_address(ip)
    network = ipaddress.ip_network(block["cidr"])
    if address.version != network.version or address not in network:
        return False
    return not any(
        address.version == ipaddress.ip_network(excluded).version
        and address in ipaddress.ip_network(excluded)
        for excluded in block.get("except", [])
    )


def peer_matches(peer: Mapping[str, Any], other: Endpoint, policy_namespace: str) -> bool:
    """One NetworkPolicyPeer against the other end of a connection."""
    if "ipBlock" in peer:
        return _in_block(other.ip, peer["ipBlock"])
    if not isinstance(other, Pod):
        return False
    if "namespaceSelector" in peer:
        in_namespace = selector_matches(peer["namespaceSelector"], other.namespace_labels)
    else:
        in_namespace = other.namespace == policy_namespace
    return in_namespace and ("podSelector" not in peer or selector_matches(peer["podSelector"], other.labels))


def port_matches(ports: list[Mapping[str, Any]] | None, port: int, protocol: str) -> bool:
    """A rule's ports against a destination port; no ports means every port."""
    if not ports:
        return True
    for entry in ports:
        if entry.get("protocol", "TCP") != protocol:
            continue
        if "port" not in entry:
            return True
        first = entry["port"]
        assert isinstance(first, int), f"named port {first!r}: the chart uses numbers"
        if first <= port <= entry.get("endPort", first):
            return True
    return False


def policy_types(policy: Mapping[str, Any]) -> list[str]:
    """spec.policyTypes, or what the API server defaults it to."""
    spec = policy["spec"]
    return spec.get("policyTypes") or (["Ingress", "Egress"] if "egress" in spec else ["Ingress"])


class NetworkPolicies:
    """The NetworkPolicies of one namespace."""

    def __init__(self, policies: list[Obj], namespace: str = NAMESPACE) -> None:
        assert all(p["kind"] == "NetworkPolicy" for p in policies)
        self.policies = policies
        self.namespace = namespace

    @classmethod
    def of(cls, release: Release) -> NetworkPolicies:
        """The policies a release renders."""
        return cls(release.of_kind("NetworkPolicy"))

    def selecting(self, pod: Endpoint, direction: str) -> list[Obj]:
        """The policies of a direction ("Ingress"/"Egress") that select a pod."""
        if not isinstance(pod, Pod) or pod.namespace != self.namespace:
            return []
        return [
            policy
            for policy in self.policies
            if direction in policy_types(policy)
            and selector_matches(policy["spec"]["podSelector"], pod.labels)
        ]

    def _direction_allows(
        self, pod: Endpoint, other: Endpoint, direction: str, port: int, protocol: str
    ) -> bool:
        policies = self.selecting(pod, direction)
        if not policies:
            return True
        rules_key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
        for policy in policies:
            for rule in policy["spec"].get(rules_key) or []:
                peers = rule.get(peers_key)
                if (not peers or any(peer_matches(p, other, self.namespace) for p in peers)) and port_matches(
                    rule.get("ports"), port, protocol
                ):
                    return True
        return False

    def egress_allows(
        self, source: Endpoint, destination: Endpoint, port: int, protocol: str = "TCP"
    ) -> bool:
        """The source's egress policies let the connection out."""
        return self._direction_allows(source, destination, "Egress", port, protocol)

    def ingress_allows(
        self, source: Endpoint, destination: Endpoint, port: int, protocol: str = "TCP"
    ) -> bool:
        """The destination's ingress policies let the connection in."""
        return self._direction_allows(destination, source, "Ingress", port, protocol)

    def allows(self, source: Endpoint, destination: Endpoint, port: int, protocol: str = "TCP") -> bool:
        """Both ends' policies let a connection from source to destination:port through."""
        return self.egress_allows(source, destination, port, protocol) and self.ingress_allows(
            source, destination, port, protocol
        )


# -- the release's pods, as KubeRay creates them ---------------------------------------------------


def _first_rayjob_spec(release: Release) -> Obj:
    specs = [rayjob_spec_of(obj) for obj in release.objects if obj["kind"] in ("RayJob", "CronWorkflow")]
    assert specs, "the release renders no RayJob"
    return specs[0]


def head_pod(release: Release, ip: str = "10.244.1.10") -> Pod:
    """The head pod: the template's labels plus those KubeRay adds (ray.io/node-type=head, ...)."""
    cluster = _first_rayjob_spec(release)["rayClusterSpec"]
    labels = dict(cluster["headGroupSpec"]["template"]["metadata"]["labels"])
    labels.update({"ray.io/node-type": "head", "ray.io/cluster": "run-abcde", "ray.io/is-ray-node": "yes"})
    return Pod(labels, ip=ip)


def worker_pods(release: Release) -> list[Pod]:
    """One pod per worker group, with KubeRay's labels (ray.io/node-type=worker, ray.io/group)."""
    cluster = _first_rayjob_spec(release)["rayClusterSpec"]
    pods = []
    for index, group in enumerate(cluster["workerGroupSpecs"]):
        labels = dict(group["template"]["metadata"]["labels"])
        labels.update(
            {
                "ray.io/node-type": "worker",
                "ray.io/group": group["groupName"],
                "ray.io/cluster": "run-abcde",
                "ray.io/is-ray-node": "yes",
            }
        )
        pods.append(Pod(labels, ip=f"10.244.2.{10 + index}"))
    return pods


def workflow_pod(release: Release) -> Pod:
    """The scheduled Workflow's step pod: the chart's podMetadata labels plus Argo's own."""
    (cron,) = release.of_kind("CronWorkflow")
    labels = dict(cron["spec"]["workflowSpec"]["podMetadata"]["labels"])
    labels.update(
        {
            "workflows.argoproj.io/workflow": "batch-inference-1767225600",
            "workflows.argoproj.io/completed": "false",
        }
    )
    return Pod(labels, ip="10.244.4.10")
