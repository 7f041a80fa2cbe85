"""Connecting to Ray: an existing cluster (address or RAY_ADDRESS) or a local one.

A local cluster binds its dashboard to 127.0.0.1 only. Worker processes import ``engine`` from the same
environment as the driver; on a remote cluster, submit jobs with ``--working-dir .`` (see README).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusterInfo:
    address: str
    cpus: float
    gpus: float
    nodes: int
    started_here: bool


def connect(address: str | None = None, *, num_cpus: int | None = None, dashboard: bool = True) -> ClusterInfo:
    """Connect to Ray, starting a local cluster if no address is given (here or in RAY_ADDRESS).

    Calling it again in the same process reuses the connection.
    """
    import ray

    started = False
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS") or None
        # Quiet workers' DeprecationWarnings; but inside a Ray job (``ray job submit``) the job's own
        # runtime env applies, and Ray refuses to merge a second one that sets the same keys.
        in_job = "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ
        env = None if in_job else {"env_vars": {"PYTHONWARNINGS": "ignore::DeprecationWarning"}}
        if address:
            log.info("connecting to the Ray cluster at %s", address)
            ray.init(address=address, logging_level=logging.WARNING, runtime_env=env)
        else:
            log.info("starting a local Ray cluster (num_cpus=%s)", num_cpus)
            ray.init(
                num_cpus=num_cpus,
                include_dashboard=dashboard,
                dashboard_host="127.0.0.1",
                logging_level=logging.WARNING,
                runtime_env=env,
            )
            started = True
    res = ray.cluster_resources()
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    ctx = ray.get_runtime_context()
    addr = getattr(ctx, "gcs_address", "") or ""
    return ClusterInfo(addr, float(res.get("CPU", 0)), float(res.get("GPU", 0)), nodes, started)


def shutdown() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
