"""The Ray pods' NetworkPolicies: who may reach them, and what they may reach.

The rendered policies are judged by what they let through (deploy_netpol.py evaluates
NetworkPolicy semantics), not only by their shape: each test names connections that must pass
and connections that must not.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from deploy_fake_api import API_SERVER_ENDPOINT, BUILTIN_RESOURCES, FakeKubeAPI, crd_resources
from deploy_manifests import (
    CRD_DIR,
    ENVIRONMENTS,
    RELEASE,
    REPO,
    HelmRefused,
    HelmRunner,
    Release,
    environment_values,
    validate,
)
from deploy_netpol import Address, NetworkPolicies, Pod, head_pod, worker_pods, workflow_pod

ALL_VALUES = ["default", *ENVIRONMENTS]
GCS, DASHBOARD, CLIENT, METRICS = 6379, 8265, 10001, 8080
# Ports Ray picks at start-up: raylet, object manager, agents, worker processes (10002-19999).
DYNAMIC_RAY_PORTS = (10002, 19999, 37000, 52365, 62000)
RAY_PORTS = (GCS, DASHBOARD, CLIENT, METRICS, *DYNAMIC_RAY_PORTS)
# Public object-storage endpoints (S3, GCS addresses) and addresses that must stay closed.
S3 = Address("52.216.100.1")
GCS_ENDPOINT = Address("142.251.10.207")
PRIVATE = [
    Address("10.0.12.7"),  # RFC 1918: pods, nodes, VPC services
    Address("172.20.0.10"),
    Address("192.168.1.20"),
    Address("100.64.3.4"),  # RFC 6598: EKS custom networking pod ranges
]
METADATA_SERVICE = Address("169.254.169.254")

PROMETHEUS = Pod({"app.kubernetes.io/name": "prometheus"}, namespace="monitoring", ip="10.244.5.5")
OPERATOR = Pod({"app.kubernetes.io/name": "kuberay-operator"}, namespace="kuberay-system", ip="10.244.6.6")
KUBE_DNS = Pod({"k8s-app": "kube-dns"}, namespace="kube-system", ip="10.244.0.53")
PUSHGATEWAY = Pod(
    {"app.kubernetes.io/name": "prometheus-pushgateway"}, namespace="monitoring", ip="10.244.5.9"
)
MINIO = Pod({"app": "minio"}, namespace="minio", ip="10.244.7.7")


def release_labels(component: str | None = None, instance: str = RELEASE) -> dict[str, str]:
    """The chart's selector labels (name, instance), with a component when given."""
    labels = {"app.kubernetes.io/name": "batch-inference", "app.kubernetes.io/instance": instance}
    if component:
        labels["app.kubernetes.io/component"] = component
    return labels


def api_server(values: str) -> list[Address]:
    """The API server's addresses for a values file: its kubernetesApi.cidrs, else what the chart looks up."""
    env = environment_values(values) if values != "default" else {}
    cidrs = env.get("networkPolicy", {}).get("egress", {}).get("kubernetesApi", {}).get("cidrs")
    if cidrs:
        return [Address(str(next(ipaddress.ip_network(cidr).hosts()))) for cidr in cidrs]
    return [Address(API_SERVER_ENDPOINT[0])]


def ray_pods(release: Release) -> list[Pod]:
    """The head and one pod of each worker group."""
    return [head_pod(release), *worker_pods(release)]


def render(helm: HelmRunner, values: dict[str, Any]) -> Release:
    """Install with values and check every object still validates."""
    release = helm.install(values)
    for obj in release.objects:
        validate(obj)
    return release


class TestIngress:
    """Only this release's Ray pods (any port), Prometheus and the operator get in."""

    @pytest.mark.parametrize("values", ALL_VALUES)
    def test_ray_pods_are_isolated_both_ways(self, releases: dict[str, Release], values: str) -> None:
        """Head and every worker group are selected by an Ingress and an Egress policy."""
        release = releases[values]
        policies = NetworkPolicies.of(release)
        for pod in ray_pods(release):
            assert policies.selecting(pod, "Ingress"), pod.labels
            assert policies.selecting(pod, "Egress"), pod.labels

    @pytest.mark.parametrize("values", ALL_VALUES)
    def test_ray_pods_reach_each_other_on_every_port(self, releases: dict[str, Release], values: str) -> None:
        """Head and workers connect to each other on the fixed and the dynamic Ray ports."""
        release = releases[values]
        policies = NetworkPolicies.of(release)
        pods = ray_pods(release)
        for source in pods:
            for destination in pods:
                if source is destination:
                    continue
                for port in RAY_PORTS:
                    assert policies.allows(source, destination, port), (
                        source.labels,
                        destination.labels,
                        port,
                    )

    @pytest.mark.parametrize(
        "labels",
        [
            release_labels(),
            release_labels("schedule"),
            release_labels("scheduled-run"),
            release_labels("rayjob"),
            release_labels("submitter"),
            {**release_labels("submitter"), "app.kubernetes.io/instance": "another-release"},
            release_labels("ray", instance="another-release"),
            {"app.kubernetes.io/component": "ray"},
            {},
        ],
        ids=[
            "chart-labels-only",
            "workflow-component",
            "scheduled-run-component",
            "rayjob-component",
            "submitter-component",
            "other-release-submitter",
            "other-release-ray-pod",
            "component-only",
            "unlabelled",
        ],
    )
    def test_other_pods_get_nothing(self, releases: dict[str, Release], labels: dict[str, str]) -> None:
        """A pod that is not one of this release's Ray pods reaches no Ray port (HTTPMode: no submitter)."""
        release = releases["default"]
        policies = NetworkPolicies.of(release)
        intruder = Pod(labels, ip="10.244.9.9")
        for destination in ray_pods(release):
            for port in RAY_PORTS:
                assert not policies.allows(intruder, destination, port), port

    def test_same_labels_in_another_namespace_get_nothing(self, releases: dict[str, Release]) -> None:
        """The release's own labels on a pod in another namespace open nothing."""
        release = releases["default"]
        policies = NetworkPolicies.of(release)
        for labels in (release_labels("ray"), release_labels("submitter")):
            elsewhere = Pod(labels, namespace="tenant-b", ip="10.244.9.10")
            for port in RAY_PORTS:
                assert not policies.allows(elsewhere, head_pod(release), port)

    @pytest.mark.parametrize("values", ALL_VALUES)
    def test_prometheus_reaches_only_the_metrics_port(
        self, releases: dict[str, Release], values: str
    ) -> None:
        """Prometheus scrapes the metrics port of every Ray pod; nothing else, and only from its namespace."""
        release = releases[values]
        policies = NetworkPolicies.of(release)
        impostor = Pod(PROMETHEUS.labels, namespace="tenant-b", ip="10.244.9.11")
        for pod in ray_pods(release):
            assert policies.ingress_allows(PROMETHEUS, pod, METRICS)
            assert not policies.ingress_allows(impostor, pod, METRICS)
            for port in (GCS, DASHBOARD, CLIENT, *DYNAMIC_RAY_PORTS):
                assert not policies.ingress_allows(PROMETHEUS, pod, port), port

    @pytest.mark.parametrize("values", ALL_VALUES)
    def test_operator_reaches_only_the_dashboard(self, releases: dict[str, Release], values: str) -> None:
        """The KubeRay operator reaches the head's dashboard (job status), no other port."""
        release = releases[values]
        policies = NetworkPolicies.of(release)
        head = head_pod(release)
        assert policies.ingress_allows(OPERATOR, head, DASHBOARD)
        for port in (GCS, CLIENT, METRICS, *DYNAMIC_RAY_PORTS):
            assert not policies.ingress_allows(OPERATOR, head, port), port
        impostor = Pod(OPERATOR.labels, namespace="tenant-b", ip="10.244.9.12")
        assert not policies.ingress_allows(impostor, head, DASHBOARD)

    def test_prometheus_and_operator_selectors_follow_values(self, helm: HelmRunner) -> None:
        """networkPolicy.prometheus / kuberayOperator choose who scrapes and who polls."""
        release = render(
            helm,
            {
                "networkPolicy": {
                    "prometheus": {
                        "namespaceLabels": {"kubernetes.io/metadata.name": "observability"},
                        # Helm merges maps: null drops the default label, the new one is added.
                        "podLabels": {"app.kubernetes.io/name": None, "app": "vmagent"},
                    },
                    "kuberayOperator": {
                        "namespaceLabels": {"kubernetes.io/metadata.name": "ray-system"},
                        "podLabels": {"app.kubernetes.io/name": "kuberay"},
                    },
                }
            },
        )
        policies = NetworkPolicies.of(release)
        head = head_pod(release)
        scraper = Pod({"app": "vmagent"}, namespace="observability", ip="10.244.5.6")
        operator = Pod({"app.kubernetes.io/name": "kuberay"}, namespace="ray-system", ip="10.244.6.7")
        assert policies.ingress_allows(scraper, head, METRICS)
        assert policies.ingress_allows(operator, head, DASHBOARD)
        assert not policies.ingress_allows(PROMETHEUS, head, METRICS)
        assert not policies.ingress_allows(OPERATOR, head, DASHBOARD)

    @pytest.mark.parametrize("values", ALL_VALUES)
    def test_release_peers_are_release_specific(self, releases: dict[str, Release], values: str) -> None:
        """Every same-namespace pod peer names this release's instance and a component, not the name alone."""
        for policy in releases[values].of_kind("NetworkPolicy"):
            spec = policy["spec"]
            for rule in [*spec.get("ingress", []), *spec.get("egress", [])]:
                for peer in rule.get("from", rule.get("to", [])):
                    if "podSelector" in peer and "namespaceSelector" not in peer:
                        labels = peer["podSelector"]["matchLabels"]
                        assert labels["app.kubernetes.io/instance"] == RELEASE
                        assert labels["app.kubernetes.io/component"] == "ray"

    def test_every_ingress_rule_names_its_peers(self, releases: dict[str, Release]) -> None:
        """No ingress rule is open to every source (a rule without `from`)."""
        for release in releases.values():
            for policy in release.of_kind("NetworkPolicy"):
                for rule in policy["spec"].get("ingress", []):
                    assert rule.get("from"), rule


class TestEgress:
    """Ray pods reach each other, the DNS, object storage, the Pushgateway when set; the head the API."""

    @pytest.mark.parametrize("values", ALL_VALUES)
    def test_dns_only_to_the_cluster_dns(self, releases: dict[str, Release], values: str) -> None:
        """UDP and TCP 53 to kube-system's DNS pods; not to look-alikes, other ports or outside resolvers."""
        release = releases[values]
        policies = NetworkPolicies.of(release)
        lookalike = Pod({"k8s-app": "kube-dns"}, ip="10.244.9.13")  # in the release's namespace
        for pod in ray_pods(release):
            assert policies.egress_allows(pod, KUBE_DNS, 53, "UDP")
            assert policies.egress_allows(pod, KUBE_DNS, 53, "TCP")
            assert not policies.egress_allows(pod, KUBE_DNS, 8080)
            assert not policies.egress_allows(pod, lookalike, 53, "UDP")
            assert not policies.egress_allows(pod, Address("8.8.8.8"), 53, "UDP")

    @pytest.mark.parametrize("values", ALL_VALUES)
    def test_object_storage_is_public_https(self, releases: dict[str, Release], values: str) -> None:
        """HTTPS to the clouds' public endpoints; no private, shared or link-local address, no other port."""
        release = releases[values]
        policies = NetworkPolicies.of(release)
        for pod in ray_pods(release):
            for endpoint in (S3, GCS_ENDPOINT):
                assert policies.egress_allows(pod, endpoint, 443)
                assert not policies.egress_allows(pod, endpoint, 80)
                assert not policies.egress_allows(pod, endpoint, 22)
            assert not policies.egress_allows(pod, METADATA_SERVICE, 80)
        for worker in worker_pods(release):
            for address in [*PRIVATE, METADATA_SERVICE]:
                assert not policies.egress_allows(worker, address, 443), address

    def test_object_storage_follows_values(self, helm: HelmRunner) -> None:
        """objectStorage.ipBlocks/ports replace the default (here: an on-premises S3 on 10.20.0.0/16:9000)."""
        release = render(
            helm,
            {
                "networkPolicy": {
                    "egress": {"objectStorage": {"ipBlocks": [{"cidr": "10.20.0.0/16"}], "ports": [9000]}}
                }
            },
        )
        policies = NetworkPolicies.of(release)
        for worker in worker_pods(release):
            assert policies.egress_allows(worker, Address("10.20.3.4"), 9000)
            assert not policies.egress_allows(worker, Address("10.21.3.4"), 9000)
            assert not policies.egress_allows(worker, S3, 443)

    def test_object_storage_can_be_closed(self, helm: HelmRunner) -> None:
        """ipBlocks [] renders no address rule at all (not a rule open to every address)."""
        release = render(helm, {"networkPolicy": {"egress": {"objectStorage": {"ipBlocks": []}}}})
        policies = NetworkPolicies.of(release)
        for worker in worker_pods(release):
            assert not policies.egress_allows(worker, S3, 443)
            assert policies.egress_allows(worker, KUBE_DNS, 53, "UDP")

    def test_dev_reaches_its_minio(self, releases: dict[str, Release]) -> None:
        """Dev's Ray pods reach MinIO (minio namespace, 9000), its config's endpoint_url; others don't."""
        dev = releases["dev"]
        endpoint = urlsplit(
            yaml.safe_load(dev.pipeline_config()["data"]["config.yaml"])["storage"]["endpoint_url"]
        )
        assert endpoint.hostname.split(".")[1] == MINIO.namespace
        assert endpoint.port == 9000
        for pod in ray_pods(dev):
            assert NetworkPolicies.of(dev).egress_allows(pod, MINIO, endpoint.port)
            assert not NetworkPolicies.of(dev).egress_allows(pod, MINIO, 9001)
        for pod in ray_pods(releases["default"]):
            assert not NetworkPolicies.of(releases["default"]).egress_allows(pod, MINIO, 9000)

    @pytest.mark.parametrize("values", ALL_VALUES)
    def test_pushgateway_open_exactly_where_the_config_pushes(
        self, releases: dict[str, Release], values: str
    ) -> None:
        """Where the config sets metrics.pushgateway_url, the head reaches that Pushgateway's port."""
        release = releases[values]
        policies = NetworkPolicies.of(release)
        config = yaml.safe_load(release.pipeline_config()["data"]["config.yaml"])
        url = (config.get("metrics") or {}).get("pushgateway_url")
        head = head_pod(release)
        if url:
            parts = urlsplit(url)
            pushgateway = Pod(PUSHGATEWAY.labels, namespace=parts.hostname.split(".")[1], ip=PUSHGATEWAY.ip)
            assert policies.egress_allows(head, pushgateway, parts.port)
            assert not policies.egress_allows(head, pushgateway, 9090)
            assert not policies.egress_allows(head, Pod(PUSHGATEWAY.labels, namespace="tenant-b"), parts.port)
        else:
            assert not policies.egress_allows(head, PUSHGATEWAY, 9091)

    @pytest.mark.parametrize("values", ALL_VALUES)
    def test_only_the_head_reaches_the_kubernetes_api(
        self, releases: dict[str, Release], values: str
    ) -> None:
        """The head (its autoscaler) reaches the API server's addresses on its ports; workers do not."""
        release = releases[values]
        policies = NetworkPolicies.of(release)
        head = head_pod(release)
        for address in api_server(values):
            assert policies.egress_allows(head, address, 443)
            assert policies.egress_allows(head, address, 6443)
            assert not policies.egress_allows(head, address, 22)
            for worker in worker_pods(release):
                assert not policies.egress_allows(worker, address, 443)
                assert not policies.egress_allows(worker, address, 6443)

    @pytest.mark.parametrize("values", ALL_VALUES)
    def test_kubernetes_api_rule_names_its_addresses(self, releases: dict[str, Release], values: str) -> None:
        """The head's API rule reaches the API server only, not any other address on 443/6443."""
        release = releases[values]
        policies = NetworkPolicies.of(release)
        head = head_pod(release)
        for elsewhere in (Address("10.96.0.1"), Address("10.0.12.7"), Address("172.20.0.99")):
            assert not policies.egress_allows(head, elsewhere, 6443), elsewhere
            assert not policies.egress_allows(head, elsewhere, 443), elsewhere

    @pytest.mark.parametrize("env", ["staging", "prod"])
    def test_staging_and_prod_name_their_api_server(self, env: str) -> None:
        """Staging and prod set kubernetesApi.cidrs in their values file (`helm template` renders them)."""
        api = environment_values(env)["networkPolicy"]["egress"]["kubernetesApi"]
        assert api["cidrs"]
        assert not api.get("allowAnyAddress")

    def test_unknown_api_server_fails_to_render(self, tmp_path: Path) -> None:
        """Without cidrs, where the API server cannot be looked up, helm install fails naming the key."""
        api = FakeKubeAPI(
            resources={**BUILTIN_RESOURCES, **crd_resources(CRD_DIR)}
        ).start()  # nothing to look up
        try:
            helm = HelmRunner(api, tmp_path)
            with pytest.raises(HelmRefused, match=r"networkPolicy\.egress\.kubernetesApi\.cidrs"):
                helm.install({})
            allowed = helm.install(
                {"networkPolicy": {"egress": {"kubernetesApi": {"allowAnyAddress": True}}}}
            )
            assert NetworkPolicies.of(allowed).egress_allows(head_pod(allowed), Address("10.96.0.1"), 443)
        finally:
            api.stop()

    def test_kubernetes_api_follows_values(self, helm: HelmRunner) -> None:
        """kubernetesApi.cidrs narrows the API rule; enabled false removes it."""
        narrowed = NetworkPolicies.of(
            render(helm, {"networkPolicy": {"egress": {"kubernetesApi": {"cidrs": ["172.20.0.0/28"]}}}})
        )
        off_release = render(helm, {"networkPolicy": {"egress": {"kubernetesApi": {"enabled": False}}}})
        off = NetworkPolicies.of(off_release)
        head = head_pod(off_release)
        assert narrowed.egress_allows(head, Address("172.20.0.10"), 6443)
        assert not narrowed.egress_allows(head, Address("10.96.0.1"), 6443)
        stranger = Pod({"app": "webhook"}, namespace="default", ip="10.244.9.16")
        assert not narrowed.egress_allows(head, stranger, 443)
        assert len(off_release.of_kind("NetworkPolicy")) == 1
        assert not off.egress_allows(head, Address("172.20.0.10"), 6443)

    @pytest.mark.parametrize("values", ALL_VALUES)
    def test_nothing_else_is_reachable(self, releases: dict[str, Release], values: str) -> None:
        """No other port or address: not the Internet on other ports, not other pods, not other releases."""
        release = releases[values]
        policies = NetworkPolicies.of(release)
        other_release = Pod(release_labels("ray", instance="another-release"), ip="10.244.9.14")
        stranger = Pod({"app": "postgres"}, namespace="default", ip="10.244.9.15")
        for pod in ray_pods(release):
            for port in (22, 80, 3306, 5432, 8080):
                assert not policies.egress_allows(pod, Address("1.2.3.4"), port), port
            for port in (443, 6443, 5432, *RAY_PORTS):
                assert not policies.egress_allows(pod, stranger, port), port
                assert not policies.egress_allows(pod, other_release, port), port

    def test_workers_reach_any_public_https_host_by_default(self, releases: dict[str, Release]) -> None:
        """The default's trade-off: any public address on 443 (any cloud's storage), nothing private."""
        release = releases["prod"]
        policies = NetworkPolicies.of(release)
        for worker in worker_pods(release):
            for public in (S3, GCS_ENDPOINT, Address("1.2.3.4")):
                assert policies.egress_allows(worker, public, 443)

    def test_an_allow_list_reaches_only_the_store(self, helm: HelmRunner) -> None:
        """objectStorage.ipBlocks as an allow-list (S3's ranges, a VPC endpoint): other hosts cut off."""
        allow_list = [{"cidr": "52.216.0.0/15"}, {"cidr": "10.40.12.0/24"}]
        release = render(helm, {"networkPolicy": {"egress": {"objectStorage": {"ipBlocks": allow_list}}}})
        policies = NetworkPolicies.of(release)
        for pod in ray_pods(release):
            assert policies.egress_allows(pod, S3, 443)
            assert policies.egress_allows(pod, Address("10.40.12.5"), 443)
            for elsewhere in (GCS_ENDPOINT, Address("1.2.3.4"), METADATA_SERVICE):
                assert not policies.egress_allows(pod, elsewhere, 443), elsewhere

    def test_extra_rules_are_added_verbatim(self, helm: HelmRunner) -> None:
        """extraEgress / extraIngress add rules (here: GKE's metadata server, an API-server proxy source)."""
        gke_metadata = {
            "to": [{"ipBlock": {"cidr": "169.254.169.254/32"}}],
            "ports": [{"port": 80, "protocol": "TCP"}],
        }
        proxy = {
            "from": [{"ipBlock": {"cidr": "172.20.0.0/28"}}],
            "ports": [{"port": 8265, "protocol": "TCP"}],
        }
        release = render(helm, {"networkPolicy": {"extraEgress": [gke_metadata], "extraIngress": [proxy]}})
        policies = NetworkPolicies.of(release)
        worker, head = worker_pods(release)[0], head_pod(release)
        assert policies.egress_allows(worker, METADATA_SERVICE, 80)
        assert policies.ingress_allows(Address("172.20.0.3"), head, DASHBOARD)
        assert not policies.ingress_allows(Address("172.20.0.3"), head, GCS)

    def test_documented_example_renders(self, helm: HelmRunner) -> None:
        """The values example in docs/deploy.md ("Network policy") passes the schema and does what it says."""
        section = (REPO / "docs" / "deploy.md").read_text(encoding="utf-8").split("## Network policy")[1]
        example = re.search(r"```yaml\n(.*?)```", section.split("\n## ")[0], re.DOTALL)
        assert example, "docs/deploy.md has no values example under Network policy"
        release = render(helm, yaml.safe_load(example.group(1)))
        policies = NetworkPolicies.of(release)
        worker = worker_pods(release)[0]
        assert policies.egress_allows(worker, Address("10.40.12.5"), 443)
        assert policies.egress_allows(worker, MINIO, 9000)
        assert policies.egress_allows(worker, PUSHGATEWAY, 9091)
        assert policies.egress_allows(worker, Address("169.254.20.10"), 53, "UDP")
        assert not policies.egress_allows(worker, Address("10.41.0.1"), 443)

    def test_disabled_renders_no_policy(self, helm: HelmRunner) -> None:
        """networkPolicy.enabled false renders no NetworkPolicy at all."""
        release = render(helm, {"networkPolicy": {"enabled": False}})
        assert not release.of_kind("NetworkPolicy")


class TestNetworkValuesSchema:
    """values.schema.json refuses values that would open more than they say."""

    @pytest.mark.parametrize(
        "values",
        [
            {"networkPolicy": {"egress": {"dns": {"ports": []}}}},
            {"networkPolicy": {"egress": {"objectStorage": {"ports": []}}}},
            {"networkPolicy": {"egress": {"kubernetesApi": {"ports": []}}}},
            {
                "networkPolicy": {
                    "egress": {"objectStorage": {"inCluster": [{"namespaceLabels": {}, "podLabels": {}}]}}
                }
            },
            {"networkPolicy": {"egress": {"objectStorage": {"ipBlocks": [{"cidr": "anywhere"}]}}}},
            {"networkPolicy": {"egress": {"pushgateway": {"port": 0}}}},
            {"networkPolicy": {"egress": {"objectStorge": {}}}},
            {"schedule": {"resources": {"limits": None}}},
        ],
        ids=[
            "dns-without-ports",
            "storage-without-ports",
            "api-without-ports",
            "in-cluster-without-ports",
            "bad-cidr",
            "bad-port",
            "typo",
            "workflow-without-limits",
        ],
    )
    def test_bad_values_are_rejected(self, helm: HelmRunner, values: dict[str, Any]) -> None:
        """An empty ports list (a rule open on every port), a bad CIDR or a typo fails helm install."""
        with pytest.raises(HelmRefused, match=r"(?i)schema|values don't meet"):
            helm.install(values)


class TestWorkflowStepPod:
    """The scheduled Workflow's step pod (Argo's executor) reaches the API server and nothing else."""

    @pytest.mark.parametrize("values", ["staging", "prod"])
    def test_reaches_only_the_api_server(self, releases: dict[str, Release], values: str) -> None:
        """Egress to the API server on 443/6443; not the metadata service, the Internet, DNS or Ray."""
        release = releases[values]
        policies = NetworkPolicies.of(release)
        step = workflow_pod(release)
        assert policies.selecting(step, "Egress")
        assert policies.selecting(step, "Ingress")
        for address in api_server(values):
            assert policies.egress_allows(step, address, 443)
        for address, port in ((METADATA_SERVICE, 80), (S3, 443), (Address("1.2.3.4"), 443)):
            assert not policies.egress_allows(step, address, port), address
        assert not policies.egress_allows(step, KUBE_DNS, 53, "UDP")
        assert not policies.egress_allows(step, head_pod(release), DASHBOARD)

    @pytest.mark.parametrize("values", ["staging", "prod"])
    def test_accepts_no_connection(self, releases: dict[str, Release], values: str) -> None:
        """Nothing reaches the step pod: not the Ray pods, not another pod of the namespace."""
        release = releases[values]
        policies = NetworkPolicies.of(release)
        step = workflow_pod(release)
        for source in (*ray_pods(release), Pod({"app": "anything"}, ip="10.244.9.17")):
            for port in (80, 443, 8080):
                assert not policies.ingress_allows(source, step, port)
