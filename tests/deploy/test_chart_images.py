"""Which image each pod runs (issue #27.4): the CPU image everywhere but the GPU group, immutable."""

from __future__ import annotations

import re

import pytest
from deploy_manifests import (
    CHART,
    ENVIRONMENTS,
    HelmRefused,
    HelmRunner,
    Release,
    environment_values,
    rayjob_spec_of,
)

ALL_VALUES = ["default", *ENVIRONMENTS]
CPU_DIGEST = "sha256:" + "a" * 64
GPU_DIGEST = "sha256:" + "b" * 64
# An immutable tag: a version (or a commit) and the image's flavour, never main or latest.
IMMUTABLE_TAG = re.compile(r"^(\d+\.\d+\.\d+([.-][0-9a-z.]+)?|[0-9a-f]{7,40})-(cpu|gpu)$")


def images(release: Release) -> dict[str, set[str]]:
    """Role -> the images its containers run: head, driver-log, cpu and gpu groups, autoscaler."""
    found: dict[str, set[str]] = {}
    for obj in release.objects:
        if obj["kind"] not in ("RayJob", "CronWorkflow"):
            continue
        cluster = rayjob_spec_of(obj)["rayClusterSpec"]
        for container in cluster["headGroupSpec"]["template"]["spec"]["containers"]:
            role = "head" if container["name"] == "ray-head" else container["name"]
            found.setdefault(role, set()).add(container["image"])
        for group in cluster["workerGroupSpecs"]:
            gpu = "num-gpus" in group["rayStartParams"]
            for container in group["template"]["spec"]["containers"]:
                found.setdefault("gpu group" if gpu else "cpu group", set()).add(container["image"])
        # KubeRay gives the autoscaler the head's image unless autoscalerOptions.image says otherwise.
        found.setdefault("autoscaler", set()).add(
            cluster["autoscalerOptions"].get("image", next(iter(found["head"])))
        )
    return found


class TestImagePerGroup:
    """The GPU image runs only where the GPUs are."""

    @pytest.mark.parametrize("values", ALL_VALUES)
    def test_gpu_image_only_on_the_gpu_group(self, releases: dict[str, Release], values: str) -> None:
        """Head, driver-log, CPU group and autoscaler run the CPU image; the GPU group the GPU image."""
        found = images(releases[values])
        (cpu,) = found["head"]
        (gpu,) = found["gpu group"]
        assert cpu != gpu
        assert cpu.endswith("-cpu") or "@sha256:" in cpu
        assert gpu.endswith("-gpu") or "@sha256:" in gpu
        for role in ("driver-log", "cpu group", "autoscaler"):
            assert found[role] == {cpu}, role

    def test_defaults_follow_the_app_version(self, releases: dict[str, Release]) -> None:
        """Without tags: <appVersion>-cpu and <appVersion>-gpu of image.repository."""
        found = images(releases["default"])
        assert found["head"] == {"ghcr.io/example/batch-inference:0.1.0-cpu"}
        assert found["gpu group"] == {"ghcr.io/example/batch-inference:0.1.0-gpu"}

    def test_digests_pin_both_images(self, helm: HelmRunner) -> None:
        """image.digest and gpuImage.digest pin each image by digest, the tags ignored."""
        release = helm.install(
            {
                "image": {"digest": CPU_DIGEST},
                "gpuImage": {"repository": "gpu.example.com/bi", "digest": GPU_DIGEST},
            }
        )
        found = images(release)
        assert found["head"] == {f"ghcr.io/example/batch-inference@{CPU_DIGEST}"}
        assert found["gpu group"] == {f"gpu.example.com/bi@{GPU_DIGEST}"}


class TestImmutableImages:
    """Every pod of a run runs the same code: no moving tag pulled again for a later pod."""

    @pytest.mark.parametrize("env", ENVIRONMENTS)
    def test_environments_use_immutable_tags(self, env: str) -> None:
        """No values file pulls Always, and every tag it sets names a version or a commit."""
        values = environment_values(env)
        assert values.get("image", {}).get("pullPolicy", "IfNotPresent") != "Always"
        for key in ("image", "gpuImage"):
            tag = values.get(key, {}).get("tag")
            assert tag is None or IMMUTABLE_TAG.match(tag), f"values-{env}.yaml {key}.tag {tag!r}"
        assert "pullPolicy: Always" not in (CHART / "values.yaml").read_text(encoding="utf-8")

    def test_always_without_digests_fails_to_render(self, helm: HelmRunner) -> None:
        """pullPolicy Always renders only with both images pinned by digest."""
        with pytest.raises(
            HelmRefused, match=r"image\.pullPolicy Always.*image\.digest and gpuImage\.digest"
        ):
            helm.install({"image": {"pullPolicy": "Always", "tag": "main-cpu"}})
        pinned = helm.install(
            {"image": {"pullPolicy": "Always", "digest": CPU_DIGEST}, "gpuImage": {"digest": GPU_DIGEST}}
        )
        assert images(pinned)["head"] == {f"ghcr.io/example/batch-inference@{CPU_DIGEST}"}
