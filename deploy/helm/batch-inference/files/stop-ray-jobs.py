"""The Ray head's preStop hook: each running Ray job's driver drains, and the job ends FAILED.

Kubernetes runs it in the ray-head container when the head pod is deleted or evicted (a node
drain, spot preemption), before it sends SIGTERM to the container's main process (KubeRay's
`ray start --head --block`), which is not the job's driver. The hook sends that SIGTERM to the
driver itself: the driver drains its write while the head and the workers are still up and exits
143, so Ray's job supervisor records the job FAILED (exit code 143) and KubeRay retries the RayJob
within its backoffLimit. A stop through the Jobs API (`ray job stop`) would end it STOPPED,
which KubeRay takes for the user's own stop and never retries.

Which process: a job submitted through the Jobs API runs its entrypoint under Ray's job
supervisor, on the head (the chart asks no entrypoint resources), as `/bin/sh -c <entrypoint>`
in this container; the Jobs API names the process that connected to Ray as the driver
(`driver_info.pid`). The supervisor gives the entrypoint the job's configuration, submission id
included, in RAY_JOB_CONFIG_JSON_ENV_VAR, which its children inherit: that proves a pid is the
job's, and finds the job's processes before the driver has connected (the pipeline lists its
inputs and loads its model first); then they all get the SIGTERM, as with `ray job stop`. Never
the shell: it waits for its command and exits with its status, where a SIGTERM would end it at
once (the job FAILED with -15 while its command still drains). A pending job is signalled once
its entrypoint runs.

What is left of a job SIGKILL_AFTER seconds after its SIGTERM is SIGKILLed, as Ray's supervisor
does after RAY_JOB_STOP_WAIT_TIME_S: the job still ends FAILED while the head is up. Once no job
is pending or running, the hook keeps the head up HOLD seconds more, so that the KubeRay
operator's status poll (every 3 s) reads the failure from this head before it goes.

Usage: python -c "$(cat stop-ray-jobs.py)" DASHBOARD_URL SIGKILL_AFTER WAIT HOLD. The chart
renders this file into the head's preStop command (templates/_ray-pod.tpl); with token
authentication the client sends the RAY_AUTH_TOKEN the container already has. Exit 1 (Kubernetes
records a FailedPreStopHook event with the message, then stops the pod anyway) when the dashboard
does not answer or a job is still pending or running after WAIT seconds.
"""

import contextlib
import json
import signal
import sys
import time

import psutil
from ray.job_submission import JobDetails, JobStatus, JobSubmissionClient

POLL_S = 1.0
JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # ray._private.runtime_env.constants
SUBMISSION_ID_KEY = "job_submission_id"  # ray.dashboard.modules.job.common.JOB_ID_METADATA_KEY


def unfinished(client: JobSubmissionClient) -> list[JobDetails]:
    """The submitted jobs that are pending or running."""
    return [job for job in client.list_jobs() if job.submission_id and not job.status.is_terminal()]


def job_processes(job: JobDetails) -> list[psutil.Process]:
    """The processes of a job's entrypoint in this container (given its configuration), but its shell."""
    shell = ["/bin/sh", "-c", job.entrypoint]  # how Ray's supervisor starts it (Popen, shell=True)
    found = []
    for process in psutil.process_iter():
        try:
            config = json.loads(process.environ().get(JOB_CONFIG_ENV) or "{}")
            ours = (config.get("metadata") or {}).get(SUBMISSION_ID_KEY) == job.submission_id
            if ours and process.cmdline() != shell:
                found.append(process)
        except (psutil.Error, ValueError):  # gone, a zombie, another user's, not Ray's JSON
            continue
    return found


def send(processes: list[psutil.Process], signum: signal.Signals, job: str) -> None:
    """Signal each process that is still the one found (psutil checks its start time)."""
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(signum)
            sys.stderr.write(f"stop-ray-jobs: {job}: {signum.name} to pid {process.pid}\n")


def end(job: JobDetails, signalled: dict[str, float], sigkill_after_s: float) -> None:
    """SIGTERM a running job's driver once; SIGKILL what is left of the job ``sigkill_after_s`` later."""
    job_id = str(job.submission_id)
    if job_id not in signalled:
        processes = job_processes(job)
        if not processes:  # the supervisor marks a job RUNNING just before it starts the entrypoint
            return
        driver = [p for p in processes if job.driver_info and str(p.pid) == job.driver_info.pid]
        send(driver or processes, signal.SIGTERM, job_id)
        signalled[job_id] = time.monotonic()
    elif time.monotonic() - signalled[job_id] > sigkill_after_s:
        send(job_processes(job), signal.SIGKILL, job_id)


def main(url: str, sigkill_after_s: float, wait_s: float, hold_s: float) -> int:
    """End every pending or running job within ``wait_s``, then hold the head ``hold_s``: 0, else 1."""
    deadline = time.monotonic() + wait_s
    signalled: dict[str, float] = {}  # submission id -> when its SIGTERM went (monotonic)
    try:
        client = JobSubmissionClient(url)
        jobs = unfinished(client)
        hold = hold_s if jobs else 0.0  # nothing ran: nothing for the operator to see
        while jobs:
            if time.monotonic() > deadline:
                names = ", ".join(str(job.submission_id) for job in jobs)
                sys.stderr.write(f"stop-ray-jobs: still pending or running after {wait_s:g}s: {names}\n")
                return 1
            for job in jobs:
                if job.status == JobStatus.RUNNING:
                    end(job, signalled, sigkill_after_s)
            time.sleep(POLL_S)
            jobs = unfinished(client)
    except (OSError, RuntimeError) as exc:  # a dashboard that does not answer (requests), or answers an error
        sys.stderr.write(f"stop-ray-jobs: {url}: {exc}\n")
        return 1
    time.sleep(hold)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], *(float(arg) for arg in sys.argv[2:5])))
