"""Placement by worker group on a real two-node Ray cluster (plus a head that does no work)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

pytestmark = pytest.mark.slow


def test_stages_run_on_their_worker_groups(local_cluster, sample_images, weights_file, tmp_path):
    """Decode tasks run only on the cpu_group node, the inference actor only on the gpu_group node."""
    from ray.util.state import list_actors, list_tasks

    local_cluster.start_head()
    local_cluster.add_node("cpu", "--num-cpus=2", '--resources={"cpu_group": 1000}')
    # A declared GPU that is not there: the actor lands here (the config keeps torch on the CPU).
    local_cluster.add_node("gpu", "--num-cpus=1", "--num-gpus=1", '--resources={"gpu_group": 1000}')
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "input": {"uri": str(sample_images)},
                "model": {"name": "resnet18", "weights": str(weights_file)},
                # The sample set's three broken images are failed rows, above the default budget.
                "output": {"uri": str(tmp_path / "out"), "max_failure_fraction": 0.5},
                # The declared GPU is not there: torch runs on the CPU, the actor still asks for a GPU.
                "inference": {"precision": "fp32", "device": "cpu"},
                "resources": {
                    "placement": "worker_groups",
                    "ray_address": local_cluster.address,
                    "actor_num_gpus": 1,
                    "worker_groups": {
                        "cpu": {"cpus": 2, "max_replicas": 1, "resources": {"cpu_group": 1000}},
                        "gpu": {"cpus": 1, "gpus": 1, "max_replicas": 1, "resources": {"gpu_group": 1000}},
                    },
                },
                "logging": {"format": "json", "progress": False},
            }
        )
    )
    run = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        env=local_cluster.env,
        timeout=600,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    manifest = json.loads((tmp_path / "out" / "_SUCCESS").read_text())
    assert manifest["counts"]["inputs"] == 43
    assert manifest["resource_plan"]["decode_resources"] == {"cpu_group": 0.001}
    assert manifest["resource_plan"]["actor_resources"] == {"gpu_group": 0.001}

    nodes = dict.fromkeys(("head", "cpu", "gpu"))
    for node in local_cluster.alive_nodes():
        resources = node["resources_total"]
        name = "cpu" if "cpu_group" in resources else "gpu" if "gpu_group" in resources else "head"
        nodes[name] = node["node_id"]
    address = local_cluster.dashboard_url
    decode_nodes = {
        task.node_id
        for task in list_tasks(address=address, detail=True, limit=10_000)
        if "decode_batch" in task.name and task.node_id
    }
    classify_nodes = {
        actor.node_id
        for actor in list_actors(address=address, detail=True, limit=1_000)
        if "Classify" in actor.class_name
    }
    assert decode_nodes == {nodes["cpu"]}
    assert classify_nodes == {nodes["gpu"]}
    assert nodes["head"] not in decode_nodes | classify_nodes
