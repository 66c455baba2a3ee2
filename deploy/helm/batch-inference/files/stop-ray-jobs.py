"""The Ray head's preStop hook: stop this cluster's Ray jobs, then wait until they have ended.

Kubernetes runs it in the ray-head container when the head pod is deleted or evicted, before it
sends SIGTERM to the container's main process (KubeRay's `ray start --head --block`), which is
not the job's driver. A stop through the Jobs API makes Ray's job supervisor send the driver
SIGTERM, and SIGKILL only after RAY_JOB_STOP_WAIT_TIME_S (the chart sets it above
stopGraceSeconds), so the driver drains its write while the head and the workers are still up.

Usage: python -c "$(cat stop-ray-jobs.py)" DASHBOARD_URL WAIT_SECONDS. The chart renders this
file into the head's preStop command (templates/_ray-pod.tpl); with token authentication the
client sends the RAY_AUTH_TOKEN the container already has. Exit 1 (Kubernetes records a
FailedPreStopHook event with the message, then stops the pod anyway) when the dashboard does not
answer or a job is still running after WAIT_SECONDS.
"""

import sys
import time

from ray.job_submission import JobSubmissionClient

POLL_S = 1.0


def unfinished(client: JobSubmissionClient) -> list[str]:
    """Submission ids of the jobs that are pending or running."""
    return [
        job.submission_id for job in client.list_jobs() if job.submission_id and not job.status.is_terminal()
    ]


def main(url: str, wait_s: float) -> int:
    """Stop every unfinished job until none is left or ``wait_s`` has passed: 0, else 1.

    Each poll stops them again: a no-op for a job already stopping, and a pending job is stopped
    once its supervisor exists.
    """
    deadline = time.monotonic() + wait_s
    try:
        client = JobSubmissionClient(url)
        while jobs := unfinished(client):
            if time.monotonic() > deadline:
                sys.stderr.write(f"stop-ray-jobs: still running after {wait_s:g}s: {', '.join(jobs)}\n")
                return 1
            for job_id in jobs:
                client.stop_job(job_id)
            time.sleep(POLL_S)
    except (OSError, RuntimeError) as exc:  # a dashboard that does not answer (requests), or answers an error
        sys.stderr.write(f"stop-ray-jobs: {url}: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], float(sys.argv[2])))
