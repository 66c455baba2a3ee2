"""Run one helm-sdkpy action in a process of its own and print its result as JSON.

helm-sdkpy wraps Helm's Go library, and a Go library reads the environment only once, when it
is loaded: HELM_DRIVER=memory (release records kept in memory, not as Secrets in the cluster)
must be in the environment the process starts with. So the tests call this script with it.

    python deploy_helm_cli.py install KUBECONFIG_FILE CHART RELEASE NAMESPACE VALUES_JSON_FILE
    python deploy_helm_cli.py lint KUBECONFIG_FILE CHART
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    """Run the action; exit 1 with {"error": ...} on stdout when Helm refuses."""
    if os.environ.get("HELM_DRIVER") != "memory":
        print(json.dumps({"error": "HELM_DRIVER=memory must be set before this process starts"}))
        return 2
    import helm_sdkpy

    action, kubeconfig_file, chart = argv[:3]
    kubeconfig = Path(kubeconfig_file).read_text(encoding="utf-8")
    try:
        if action == "install":
            release, namespace, values_file = argv[3:6]
            config = helm_sdkpy.Configuration(namespace=namespace, kubeconfig=kubeconfig)
            values = json.loads(Path(values_file).read_text(encoding="utf-8"))
            result = asyncio.run(helm_sdkpy.Install(config).run(release, chart, values=values, wait=False))
        elif action == "lint":
            config = helm_sdkpy.Configuration(kubeconfig=kubeconfig)
            result = asyncio.run(helm_sdkpy.Lint(config).run(chart))
        else:
            print(json.dumps({"error": f"unknown action {action}"}))
            return 2
    except helm_sdkpy.HelmError as exc:
        print(json.dumps({"error": str(exc)}))
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
