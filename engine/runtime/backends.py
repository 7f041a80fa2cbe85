"""Where batches of blocks run: in this process (serial) or on Ray actors (one per GPU or CPU worker).

Both backends take the same calls from the scheduler — ``start``, ``submit(worker, ids)``,
``wait(timeout)``, ``replace(worker)``, ``stop`` — so every scheduling rule (retries, resume, progress)
is written once and tested on both.
"""

from __future__ import annotations

import logging
import re
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass
from typing import Any

from engine.errors import ConfigError, ConnectileError
from engine.geometry import BlockGrid
from engine.runtime.execute import BatchResult, BlockRunner
from engine.runtime.mask import BlockMask
from engine.runtime.op import BlockOp

log = logging.getLogger(__name__)


class WorkerSetupError(ConnectileError):
    """An operation's ``setup()`` failed on a worker (a bad checkpoint, a missing input …)."""


@dataclass
class Completion:
    """A finished batch: its result, or ``lost`` (why the worker died) if the worker is gone."""

    worker: int
    ids: list[int]
    result: BatchResult | None = None
    lost: str | None = None
    #: For a lost worker: True for the batch it was running (its blocks may have caused the death),
    #: False for batches that were only queued behind it.
    culprit: bool = True
    #: The worker was killed because this batch ran past its deadline (see engine.runtime.deadline).
    timed_out: bool = False


class Backend(ABC):
    name = "backend"

    @abstractmethod
    def start(self, op: BlockOp, grid: BlockGrid, mask: BlockMask | None) -> None: ...

    @property
    @abstractmethod
    def num_workers(self) -> int: ...

    @abstractmethod
    def submit(self, worker: int, ids: list[int]) -> None: ...

    @abstractmethod
    def wait(self, timeout: float) -> list[Completion]: ...

    def replace(self, worker: int) -> None:
        raise NotImplementedError

    def abort(self, worker: int, why: str) -> list[Completion] | None:
        """Kill ``worker`` (its running batch is past its deadline) and return its outstanding
        batches as lost (the running one ``timed_out``); None where the backend cannot stop a block."""
        return None

    def stop(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release workers."""

    def workers(self) -> list[dict[str, Any]]:
        return []


class SerialBackend(Backend):
    """Runs blocks in this process, one batch per ``wait``. The op is pickled and unpickled first
    (with Ray's cloudpickle), exactly as it would be for a worker, so the serial path also checks that everything pickles."""

    name = "serial"

    def __init__(self) -> None:
        self._runner: BlockRunner | None = None
        self._queue: deque[list[int]] = deque()

    def start(self, op: BlockOp, grid: BlockGrid, mask: BlockMask | None) -> None:
        from ray import cloudpickle  # what Ray itself uses to ship the op to actors

        op2, grid2, mask2 = cloudpickle.loads(cloudpickle.dumps((op, grid, mask)))
        try:
            self._runner = BlockRunner(op2, grid2, mask2)
        except ConnectileError:
            raise
        except Exception as err:
            raise WorkerSetupError(f"setting up {op.kind!r} failed: {type(err).__name__}: {err}") from err

    @property
    def num_workers(self) -> int:
        return 1

    def submit(self, worker: int, ids: list[int]) -> None:
        self._queue.append(ids)

    def wait(self, timeout: float) -> list[Completion]:
        if not self._queue or self._runner is None:
            return []
        ids = self._queue.popleft()
        return [Completion(0, ids, self._runner.run(ids))]

    def stop(self) -> None:
        if self._runner is not None:
            self._runner.close()

    def workers(self) -> list[dict[str, Any]]:
        return [{"worker": 0, "name": self._runner.name if self._runner else "", "node": "local"}]


class _Actor:
    """The Ray actor: builds a BlockRunner once (the op's setup) and runs batches."""

    def __init__(self, payload: tuple[BlockOp, BlockGrid, BlockMask | None]) -> None:
        # ``payload`` was put in the object store once; Ray resolves the ref in the worker process.
        self.runner: BlockRunner | None = BlockRunner(*payload)
        self.name = self.runner.name

    def info(self) -> dict[str, Any]:
        import ray

        ctx = ray.get_runtime_context()
        return {"name": self.name, "node": ctx.get_node_id(), "gpus": [str(g) for g in ray.get_gpu_ids()]}

    def load(self, payload: tuple[BlockOp, BlockGrid, BlockMask | None]) -> dict[str, Any]:
        """Take the next run's operation (``RayBackend(keep_workers=True)``): set it up in this process."""
        self.close()
        self.runner = BlockRunner(*payload)
        return self.info()

    def run(self, ids: list[int]) -> BatchResult:
        assert self.runner is not None, "run() after close() without load()"
        return self.runner.run(ids)

    def close(self) -> None:
        if self.runner is not None:
            self.runner.close()
            self.runner = None


def _lost_errors() -> tuple[type[BaseException], ...]:
    import ray

    return (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError, ray.exceptions.WorkerCrashedError)


class RayBackend(Backend):
    """Ray actors: one per GPU when the op wants a GPU and the cluster has some, else ``workers`` CPU
    workers (default: one per CPU in the cluster). The op, grid and mask travel once per actor.

    With ``keep_workers=True`` the actors outlive a run: ``stop()`` only tears the op down, and the
    next run's ``start()`` hands the same processes its op (when it asks for the same resources), so a
    pipeline of several passes starts its workers once. Call ``shutdown()`` (or use the backend as a
    context manager) to end them."""

    name = "ray"

    def __init__(
        self,
        workers: int | None = None,
        *,
        address: str | None = None,
        cpus_per_worker: float = 1.0,
        use_gpus: bool | None = None,
        keep_workers: bool = False,
    ) -> None:
        if workers is not None and workers < 1:
            raise ConfigError(f"workers must be >= 1, got {workers}")
        self.requested = workers
        self.address = address
        self.cpus_per_worker = cpus_per_worker
        self.use_gpus = use_gpus
        self.keep_workers = keep_workers
        self._actors: list[Any] = []
        self._info: list[dict[str, Any]] = []
        self._refs: dict[Any, tuple[int, list[int]]] = {}
        self._payload: Any = None
        self._options: dict[str, Any] = {}

    def start(self, op: BlockOp, grid: BlockGrid, mask: BlockMask | None) -> None:
        import ray

        from engine.runtime.cluster import connect

        info = connect(self.address, num_cpus=self.requested)
        gpus = int(info.gpus)
        use_gpu = op.wants_gpu and gpus > 0 if self.use_gpus is None else bool(self.use_gpus) and gpus > 0
        if use_gpu:
            n = gpus if self.requested is None else min(self.requested, gpus)
            options: dict[str, Any] = {"num_gpus": 1, "num_cpus": self.cpus_per_worker}
        else:
            n = self.requested or max(1, int(info.cpus // self.cpus_per_worker))
            options = {"num_cpus": self.cpus_per_worker}
        self._payload = ray.put((op, grid, mask))
        if self._actors and self.keep_workers and options == self._options and len(self._actors) == n:
            reloaded = self._reload()
            if reloaded is not None:
                self._info = reloaded
                log.info("ray backend: %d kept workers took %s", n, op.kind or type(op).__name__)
                return
        if self._actors:  # kept workers of another shape (GPU/CPU, count): start afresh
            self.shutdown()
        self._options = options
        self._remote = ray.remote(max_restarts=0, max_task_retries=0)(_Actor)
        self._actors = [self._new_actor() for _ in range(n)]
        self._info = self._check_ready(list(range(n)))
        log.info("ray backend: %d workers (%s) on %d node(s)", n, "GPU" if use_gpu else "CPU", info.nodes)

    def _new_actor(self) -> Any:
        return self._remote.options(**self._options).remote(self._payload)

    def _check_ready(self, workers: list[int], starts: int = 3) -> list[dict[str, Any]]:
        """Wait until ``workers`` have set the op up. A worker whose process died while starting (killed,
        out of memory: not an error of the op's setup) is started again, up to ``starts`` times in all."""
        import ray

        for attempt in range(1, starts + 1):
            refs = [self._actors[w].info.remote() for w in workers]
            try:
                return list(ray.get(refs))
            except ray.exceptions.RayActorError as err:
                if err.actor_init_failed or attempt == starts:
                    self.stop()
                    raise WorkerSetupError(f"a worker failed to set up the operation: {_cause(err)}", "fix the input or parameters named above and run again") from err
                dead = [w for w, ref in zip(workers, refs, strict=True) if _died(ref)]
                log.warning("worker(s) %s died while starting (%s); starting them again", dead, _cause(err))
                for w in dead:
                    self._actors[w] = self._new_actor()
        raise AssertionError("unreachable")

    def _reload(self) -> list[dict[str, Any]] | None:
        """Hand the new payload to the kept workers; None if one of them has died meanwhile."""
        import ray

        refs = [a.load.remote(self._payload) for a in self._actors]
        try:
            return list(ray.get(refs))
        except ray.exceptions.RayActorError as err:
            log.warning("a kept worker is gone (%s); starting new ones", _cause(err))
            return None
        except ray.exceptions.RayTaskError as err:
            self.shutdown()
            raise WorkerSetupError(f"a worker failed to set up the operation: {_cause(err)}", "fix the input or parameters named above and run again") from err

    @property
    def num_workers(self) -> int:
        return len(self._actors)

    def submit(self, worker: int, ids: list[int]) -> None:
        ref = self._actors[worker].run.remote(ids)
        self._refs[ref] = (worker, ids)

    def wait(self, timeout: float) -> list[Completion]:
        import ray

        if not self._refs:
            return []
        ready, rest = ray.wait(list(self._refs), num_returns=1, timeout=timeout)
        if ready and rest:
            more, _ = ray.wait(rest, num_returns=len(rest), timeout=0)
            ready += more
        out: list[Completion] = []
        lost_workers: list[int] = []
        for ref in ready:
            if ref not in self._refs:
                continue
            worker, ids = self._refs[ref]
            try:
                result = ray.get(ref)
            except _lost_errors() as err:
                log.debug("worker %d lost: %s", worker, err)
                lost_workers.append(worker)
                continue
            del self._refs[ref]
            out.append(Completion(worker, ids, result))
        for worker in dict.fromkeys(lost_workers):
            out += self._collect_dead(worker)
        return out

    def abort(self, worker: int, why: str) -> list[Completion]:
        import ray

        ray.kill(self._actors[worker], no_restart=True)
        return [
            Completion(c.worker, c.ids, lost=why, culprit=True, timed_out=True) if c.culprit and c.result is None else c
            for c in self._collect_dead(worker)
        ]

    def _collect_dead(self, worker: int) -> list[Completion]:
        """All outstanding batches of a dead worker, in submission order. Actor calls run in that
        order, so the first batch that did not return is the one that was running when the worker
        died (the *culprit*); batches behind it were only queued. Batches that finished before the
        death keep their results."""
        import ray

        refs = [r for r, (w, _) in self._refs.items() if w == worker]
        ray.wait(refs, num_returns=len(refs), timeout=30)
        out: list[Completion] = []
        culprit_seen = False
        for ref in refs:
            _, ids = self._refs.pop(ref)
            try:
                out.append(Completion(worker, ids, ray.get(ref, timeout=0)))
            except _lost_errors() as err:
                out.append(Completion(worker, ids, lost=_cause(err), culprit=not culprit_seen))
                culprit_seen = True
            except ray.exceptions.GetTimeoutError:
                out.append(Completion(worker, ids, lost="the worker stopped answering", culprit=not culprit_seen))
                culprit_seen = True
        return out

    def replace(self, worker: int) -> None:
        import ray

        ray.kill(self._actors[worker], no_restart=True)
        self._actors[worker] = self._new_actor()
        self._info[worker] = self._check_ready([worker])[0]
        log.warning("replaced worker %d (now %s)", worker, self._info[worker]["name"])

    def stop(self) -> None:
        """End the run: tear the op down on every worker, then end the workers (unless ``keep_workers``)."""
        import ray

        if self._actors:  # let live workers tear down (close files) before they are killed
            ray.wait([a.close.remote() for a in self._actors], num_returns=len(self._actors), timeout=10)
        if self.keep_workers:
            self._refs = {}
            return
        self.shutdown()

    def shutdown(self) -> None:
        """End the workers (kept ones too)."""
        import ray

        for actor in self._actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception as err:  # noqa: BLE001 - an actor already gone is fine
                log.debug("killing actor: %s", err)
        self._actors = []
        self._refs = {}

    def workers(self) -> list[dict[str, Any]]:
        return [{"worker": i, **info} for i, info in enumerate(self._info)]

    def __enter__(self) -> RayBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._actors:
            self.shutdown()


def _died(ref: Any) -> bool:
    """Whether the call behind ``ref`` failed because its actor died (waits for the call to end)."""
    import ray

    try:
        ray.get(ref)
    except ray.exceptions.RayActorError:
        return True
    except Exception:  # noqa: BLE001 - any other outcome: the actor is alive
        return False
    return False


def _cause(err: BaseException) -> str:
    """The informative line of a Ray error: the last ``SomeError: message`` line of the remote
    traceback if there is one, else the first lines of the message (ANSI colours removed)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    raised = [line for line in lines if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b.*", line)]
    if raised:
        return raised[-1][:800]
    return " ".join(lines[:3])[:800]
