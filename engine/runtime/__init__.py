"""The blockwise runtime: operations, backends (serial, Ray), done-markers, progress."""

from engine.runtime.backends import Backend, RayBackend, SerialBackend, WorkerSetupError
from engine.runtime.cluster import ClusterInfo, connect, shutdown
from engine.runtime.execute import BatchResult, BlockRunner
from engine.runtime.markers import DoneStore, run_hash
from engine.runtime.mask import BlockMask
from engine.runtime.op import OPS, BlockOp
from engine.runtime.options import BackendName, RuntimeOptions
from engine.runtime.progress import RunSummary
from engine.runtime.scheduler import default_state_dir, make_backend, run_blockwise

__all__ = [
    "OPS",
    "Backend",
    "BackendName",
    "BatchResult",
    "BlockMask",
    "BlockOp",
    "BlockRunner",
    "ClusterInfo",
    "DoneStore",
    "RayBackend",
    "RunSummary",
    "RuntimeOptions",
    "SerialBackend",
    "WorkerSetupError",
    "connect",
    "default_state_dir",
    "make_backend",
    "run_blockwise",
    "run_hash",
    "shutdown",
]
