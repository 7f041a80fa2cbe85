"""Connecting to Ray: an existing cluster (address or RAY_ADDRESS) or a local one.

A local cluster binds its dashboard to 127.0.0.1 only. Worker processes import ``engine`` from the same
environment as the driver; on a remote cluster, submit jobs with ``--working-dir .`` (see README). The
driver's storage settings (``CONNECTILE_S3_ENDPOINT`` and the others of
:func:`engine.storage.errors.storage_settings`) reach the workers through the job's ``runtime_env``;
inside ``ray job submit`` the job's own ``runtime_env`` applies (add them to its ``env_vars``).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
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
    if ray.is_initialized():
        _check_same_cluster(address)
    else:
        source = "--address (runtime.address)" if address else "RAY_ADDRESS"
        address = address or os.environ.get("RAY_ADDRESS") or None
        if address:
            check_reachable(address, source)
        # Quiet workers' DeprecationWarnings; but inside a Ray job (``ray job submit``) the job's own
        # runtime env applies, and Ray refuses to merge a second one that sets the same keys.
        # The storage settings (S3/GCS endpoints, regions, retries; not credentials) go along: the workers
        # of a running cluster were started with its environment, not this one's.
        from engine.storage.errors import storage_settings

        in_job = "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ
        env = None if in_job else {"env_vars": {**WORKER_ENV, **storage_settings()}}
        if address:
            log.info("connecting to the Ray cluster at %s", address)
            ray.init(address=address, logging_level=logging.WARNING, runtime_env=env)
            _ADDRESSES.add(_host_port(address))  # as given: the cluster may call itself by another IP
        else:
            log.info("starting a local Ray cluster (num_cpus=%s)", num_cpus)
            # No runtime_env here: the cluster's processes are this one's children and inherit its
            # environment (storage settings included), and a job runtime_env would keep Ray from handing
            # the workers it prestarts to the actors (measured: 1.1-1.3 s to start two actors, 0.37 s
            # on the prestarted workers). WORKER_ENV goes in through the environment instead.
            with _environment(WORKER_ENV):
                ray.init(
                    # "local": a new cluster of this process's own, even where `ray start` left one's address on this
                    # machine (without it Ray attaches to that one, or to a dead one, and refuses num_cpus)
                    address="local",
                    num_cpus=num_cpus,
                    include_dashboard=dashboard,
                    dashboard_host="127.0.0.1",
                    logging_level=logging.WARNING,
                    # Ray starts workers 15 levels nicer than the driver: on a shared machine the blockwise
                    # work then starves behind everything else (seen: ~4% CPU per worker under load). The
                    # workers of a local cluster run at the driver's own priority instead.
                    _system_config={"worker_niceness": 0},  # an increment over the raylet, which inherits the driver's
                )
            started = True
    res = ray.cluster_resources()
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    ctx = ray.get_runtime_context()
    addr = getattr(ctx, "gcs_address", "") or ""
    return ClusterInfo(addr, float(res.get("CPU", 0)), float(res.get("GPU", 0)), nodes, started)


#: What every worker's environment gets: quiet DeprecationWarnings.
WORKER_ENV = {"PYTHONWARNINGS": "ignore::DeprecationWarning"}


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """``values`` in ``os.environ`` while the block runs (the processes it starts inherit them)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


#: The addresses this process connected with (``127.0.0.1:6379`` for a head that calls itself 10.0.0.5:6379).
_ADDRESSES: set[str] = set()


def _host_port(address: str) -> str:
    return address.strip().split("://", 1)[-1].rstrip("/")


def _check_same_cluster(address: str | None) -> None:
    """In a process already connected to Ray, an address (given, or in RAY_ADDRESS) of another cluster is
    an error rather than silently ignored: unreachable ones as :func:`check_reachable` says, others as
    "connected to another cluster"."""
    import ray

    from engine.errors import ConfigError

    source = "--address (runtime.address)" if address else "RAY_ADDRESS"
    wanted = address or os.environ.get("RAY_ADDRESS")
    if not wanted or wanted.strip() in ("auto", "local"):
        return
    current = getattr(ray.get_runtime_context(), "gcs_address", "") or ""
    if not current or _host_port(wanted) in (_host_port(current), *_ADDRESSES):
        return
    check_reachable(wanted, source)
    raise ConfigError(f"this process is connected to the Ray cluster at {current}, not {wanted} (from {source})",
                      "use one process per cluster: run the command in a new shell, or leave the address out to use the connected cluster")


def check_reachable(address: str, source: str, timeout: float = 5.0) -> None:
    """A :class:`ConfigError` naming ``address`` and where it came from when nothing answers there.

    ``ray.init`` waits minutes for an address where no cluster runs (a typo, a cluster since stopped,
    a ``RAY_ADDRESS`` left in the shell); one TCP connection tells at once. ``auto`` / ``local`` are
    left to Ray.
    """
    import socket

    from engine.errors import ConfigError

    text = address.strip()
    if text in ("auto", "local"):
        return
    hostport = text.split("://", 1)[-1].rstrip("/")
    host, sep, port_text = hostport.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ConfigError(f"the Ray address {address!r} from {source} is not HOST:PORT", "e.g. --address 10.0.0.5:6379 (or ray://HOST:10001)")
    try:
        with socket.create_connection((host.strip("[]"), int(port_text)), timeout=timeout):
            pass
    except OSError as err:
        why = err.strerror or type(err).__name__
        unset = "; or unset RAY_ADDRESS to start a local cluster" if source == "RAY_ADDRESS" else ""
        raise ConfigError(
            f"cannot reach the Ray cluster at {address} from {source} ({why})",
            f"start the cluster (ray start --head) or fix the address{unset}",
        ) from err


def shutdown() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
    _ADDRESSES.clear()
