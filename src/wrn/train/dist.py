"""Data-parallel training on torchrun: process group, DDP, SyncBN, metrics over all processes.

    torchrun --nproc-per-node 4 -m wrn train --preset paper-cifar --data cifar10

torchrun starts one process per GPU (or per CPU slot) and sets RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR and MASTER_PORT; ``world()`` reads them, and without them everything here is a
no-op for a single process (rank 0 of 1). ``engine.fit`` is wrapped by ``with_process_group``
(NCCL on CUDA, gloo on CPU; destroyed at the end and on error, after which the CLI ends the process
with ``exit_worker``), trains through ``wrap_model`` (DistributedDataParallel), and sums its
metrics with ``all_sum``. Only rank 0 writes files.

The batch: ``train.batch_size`` is the global batch, split evenly over the processes (each takes
its slice of the same global permutation, see ``wrn.data.loader``). DDP averages the gradients of
the per-process mean losses, which is the gradient of the mean loss over the global batch, so the
lr recipe of a config does not depend on the number of processes. What does: BatchNorm computes
its batch statistics over each process's slice (B / W images) unless ``accel.sync_bn=true``
(SyncBatchNorm: statistics over the global batch; CUDA only).

BN running statistics are kept per process during training (no broadcast every step) and
averaged over the processes before every evaluation and checkpoint (``average_buffers``). The
running statistics are exponential moving averages, which are linear, so averaging them at any
point equals keeping one average over all processes' batches: when and how often a run
checkpoints does not change the result.

A lost process: every collective waits at most ``accel.dist_timeout`` seconds (the process group's
timeout), and a collective that fails - a peer died (gloo: at once, its connection is reset) or
stopped answering (after the timeout) - ends this process with ``CollectiveFailed``: one line naming
the collective and, where gloo's ``monitored_barrier`` can tell, the rank that did not answer. Such
a process writes no checkpoint: rank 0 writes one only after the collectives of its step (and of a
graceful stop, the all-reduced stop flag) succeeded on every process, so a checkpoint always holds a
step that all of them finished, and a restarted job resumes from the last complete one.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import hashlib
import os
import re
import signal
import sys
import threading
import time
import warnings
from typing import Any, Callable, Iterator, NoReturn, TypeVar

import torch
import torch.distributed as tdist
import torch.nn as nn

from wrn.errors import UserError
from wrn.train.accel import resolve_device

FitFn = TypeVar("FitFn", bound=Callable[..., Any])


def world() -> tuple[int, int, int]:
    """(rank, world_size, local_rank); (0, 1, 0) outside torchrun."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def is_main() -> bool:
    return world()[0] == 0


def active() -> bool:
    """Whether collectives run: a process group of more than one process is up."""
    return tdist.is_available() and tdist.is_initialized() and tdist.get_world_size() > 1


def backend(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def local_device(device: torch.device) -> torch.device:
    """Under torchrun, CUDA means this process's own GPU: cuda:LOCAL_RANK (made current)."""
    _, world_size, local_rank = world()
    if world_size == 1 or device.type != "cuda":
        return device
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise UserError(f"process LOCAL_RANK={local_rank} has no GPU ({count} visible on this node): "
                        f"start at most {count} processes per node (torchrun --nproc-per-node {count})")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


class CollectiveFailed(UserError):
    """A collective failed: another process died or stopped answering. No checkpoint was written
    for the step; the same command run again (torchrun --max-restarts, a requeue) resumes."""


# A second gloo group just for naming a rank that stopped answering: after a timeout the default
# group's connections are broken. Set by ``init`` (the process group itself is global state too).
_monitor: tuple[Any, float] | None = None  # (the group, accel.dist_timeout)
# How long monitored_barrier waits for the others, after a collective failed: the processes that
# timed out in the same collective meet there (capped at half of accel.dist_timeout).
MONITOR_S = 5.0


def init(device: torch.device, timeout_s: float = 300.0) -> bool:
    """Start the default process group from the torchrun environment, its collectives waiting at
    most ``timeout_s``; False when there is nothing to do (a single process, or a group the caller
    already started)."""
    global _monitor
    if world()[1] == 1 or (tdist.is_available() and tdist.is_initialized()):
        return False
    if not tdist.is_available():
        raise UserError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed: run one process")
    kwargs: dict[str, Any] = {"device_id": device} if device.type == "cuda" else {}
    timeout = datetime.timedelta(seconds=timeout_s)
    store = _attempt_store(timeout)
    if store is not None:
        rank, world_size, _ = world()
        kwargs.update(store=store, rank=rank, world_size=world_size)
    tdist.init_process_group(backend=backend(device), timeout=timeout, **kwargs)
    _monitor = tdist.new_group(backend="gloo", timeout=timeout), timeout_s
    return True


def _attempt_store(timeout: datetime.timedelta) -> Any:
    """torchrun's own store, its keys scoped to this attempt (TORCHELASTIC_RESTART_COUNT); None:
    ``init_process_group`` builds its store from the environment as usual.

    torchrun's agent keeps one store for all its attempts (TORCHELASTIC_USE_AGENT_STORE), and the
    process group's keys carry no attempt: after a ``--max-restarts`` relaunch a process could read
    the address a killed process of the last attempt published, and fail to connect ("Connection
    refused") or wait out the timeout. With one agent (one node) its restart count is the job's;
    several agents may count restarts differently (one restarting for a failure, another for the
    new membership), so there PyTorch's default stays: set TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 for
    torchrun, which gives every attempt a store of its own.
    """
    env = os.environ
    if env.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or env.get("GROUP_WORLD_SIZE") != "1":
        return None
    store = tdist.TCPStore(env["MASTER_ADDR"], int(env["MASTER_PORT"]), is_master=False, timeout=timeout)
    return tdist.PrefixStore(f"wrn/attempt-{env.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def _silent_ranks() -> str:
    """Which ranks do not answer, from ``monitored_barrier`` (gloo; rank 0 collects the answers):
    "rank 1 did not answer", or "" when it cannot tell (a dead peer's closed connection, not rank 0)."""
    if _monitor is None or not active():
        return ""
    group, timeout_s = _monitor
    limit = min(MONITOR_S, timeout_s / 2)
    try:
        tdist.monitored_barrier(group=group, timeout=datetime.timedelta(seconds=limit), wait_all_ranks=True)
    except RuntimeError as e:
        found = re.search(r"Ranks? ([\d, ]+) failed to pass monitoredBarrier", str(e))
        if found:
            ranks = found.group(1).strip().rstrip(",")
            return f"rank {ranks} did not answer within {limit:.0f} s"
    return ""


def _cause(e: BaseException) -> str:
    """gloo's/NCCL's message without its source path ("[.../pair.cc:537] ") and its sign-off."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    text = re.sub(r"^\[[^\]]*\.(cc|cpp|h):\d+\]\s*", "", text)
    return text.split(". This is typically caused")[0].rstrip(".")


def _ignore_stop_signals() -> None:
    """A process whose peer is gone is on its way out: torchrun's SIGTERM to the survivors (sent as
    soon as one process ended) must not end it before it said why (torchrun SIGKILLs it after 30 s
    if it hangs). Ignored, not deferred: the process group is broken, nothing is left to stop."""
    if active() and threading.current_thread() is threading.main_thread():
        for s in (signal.SIGTERM, signal.SIGINT):
            signal.signal(s, signal.SIG_IGN)


def failed(what: str, e: BaseException, seconds: float | None = None) -> CollectiveFailed:
    """The one-line error for a failed collective ``what``."""
    _ignore_stop_signals()
    rank = world()[0]
    after = f" after {seconds:.0f} s" if seconds is not None else ""
    silent = _silent_ranks()
    return CollectiveFailed(
        f"rank {rank}: {what} failed{after} ({_cause(e)}){'; ' + silent if silent else ''}: another process died "
        "or stopped answering, so this one stops without writing a checkpoint; run the same command again "
        "(torchrun --max-restarts, a requeue) to resume from the last complete checkpoint")


def is_collective_error(e: BaseException) -> bool:
    """An error raised by a collective (gloo or NCCL), e.g. inside DDP's backward."""
    dist_error = getattr(tdist, "DistError", ())
    return isinstance(e, dist_error) or (isinstance(e, RuntimeError) and re.search(r"gloo|NCCL|ProcessGroup", str(e))
                                         is not None)


@contextlib.contextmanager
def collective(what: str) -> Iterator[None]:
    """Name the collective(s) inside: a failure becomes ``CollectiveFailed`` saying ``what``."""
    t0 = time.monotonic()
    try:
        yield
    except RuntimeError as e:
        if not is_collective_error(e):
            raise
        raise failed(what, e, time.monotonic() - t0) from None


def with_process_group(fit: FitFn) -> FitFn:
    """Decorator for ``fit(cfg, ...)``: under torchrun, init the process group before and destroy
    it after, also when the run fails (torchrun then stops the other processes)."""

    @functools.wraps(fit)
    def wrapper(cfg, *args, **kwargs):
        global _monitor
        device = local_device(resolve_device(cfg.accel.device)) if world()[1] > 1 else None
        started = init(device, cfg.accel.dist_timeout) if device is not None else False
        try:
            result = fit(cfg, *args, **kwargs)
            if started:
                # Leave together: rank 0 still writes the summary and plots the curves, and a rank
                # that tears gloo down while another is still connected can abort at exit.
                with collective("the barrier at the end of the run"):
                    tdist.barrier()
            return result
        except CollectiveFailed:
            _ignore_stop_signals()  # again: leaving fit's preemption guard restored the handlers
            raise
        except RuntimeError as e:
            # Collectives inside DDP (the gradients' all-reduce in backward) are not ours to wrap.
            if started and is_collective_error(e):
                raise failed("a collective inside DDP (the gradients' all_reduce)", e) from None
            raise
        finally:
            if started:
                tdist.destroy_process_group()
                _monitor = None

    return wrapper  # type: ignore[return-value]


def exit_worker(status: int) -> NoReturn:
    """End a torchrun worker process with ``status`` now, skipping the interpreter's teardown.

    When the command returns, its process group is destroyed and the files it wrote are closed.
    Teardown would only free what is left, and in CI (once, a loaded 2-core machine) it aborted a
    rank of a finished run: "terminate called without an active exception", exit -6, which torchrun
    reports as a failed run. That is the message of a C++ thread stopped while the interpreter is
    torn down; the likely one is a gloo worker thread releasing a tensor of the last collectives.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def wrap_model(model: nn.Module, device: torch.device, *, sync_bn: bool = False) -> nn.Module:
    """The module to train: ``model`` itself in a single process, else DDP over it.

    ``sync_bn`` converts ``model``'s BatchNorm layers to SyncBatchNorm in place (same parameters
    and state-dict keys, so checkpoints load into a plain model). Keep using ``model`` (not the
    wrapper) for evaluation, checkpoints and the optimizer: the parameters are the same tensors.
    """
    if sync_bn and active():
        if device.type != "cuda":
            raise UserError("accel.sync_bn=true needs CUDA (PyTorch's SyncBatchNorm has no CPU kernel): "
                            "set accel.sync_bn=false for CPU/gloo runs")
        for name, child in list(model.named_children()):
            setattr(model, name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
    if not active():
        return model
    # The gradient of a 1x1 conv weight [O, I, 1, 1] may come back with channels_last strides: the
    # same memory layout as the weight's (size-1 dims), but DDP compares strides and warns once per
    # process about a possible slowdown that does not happen here.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    # forward_sync_buffers=False: no broadcast of BN buffers before every forward (a collective per
    # step); they are averaged before each evaluation/checkpoint instead (average_buffers).
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None, forward_sync_buffers=False)


def all_sum(*values: Any) -> tuple[Any, ...]:
    """Sum tensors (0-d) and numbers over all processes in one collective; same types back.

    Unchanged in a single process. Sums travel as float64 (exact for counts below 2**53).
    """
    if not active():
        return values
    device = next((v.device for v in values if isinstance(v, torch.Tensor)), torch.device("cpu"))
    if device.type == "cpu" and tdist.get_backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    flat = torch.stack([v.detach().to(device, torch.float64).reshape(()) if isinstance(v, torch.Tensor)
                        else torch.tensor(float(v), dtype=torch.float64, device=device) for v in values])
    with collective("the all_reduce of the metric sums"):
        tdist.all_reduce(flat, op=tdist.ReduceOp.SUM)
    out: list[Any] = []
    for v, s in zip(values, flat):
        if isinstance(v, torch.Tensor):
            out.append(s.to(v.device, v.dtype))
        elif isinstance(v, int):
            out.append(int(round(s.item())))
        else:
            out.append(s.item())
    return tuple(out)


def any_true(flag: bool, device: torch.device) -> bool:
    """Whether any process has ``flag`` set (a collective: all processes call it), so that a
    signal that reached one rank a step before another still stops every rank at the same step."""
    if not active():
        return flag
    if device.type == "cpu" and tdist.get_backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    t = torch.tensor([int(flag)], dtype=torch.int32, device=device)
    with collective("the all_reduce of the stop flag after a step"):
        tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return bool(t.item())


def broadcast_int(value: int, device: torch.device) -> int:
    """Rank 0's ``value`` on every process (a collective), e.g. the step count a budget chose."""
    if not active():
        return value
    if device.type == "cpu" and tdist.get_backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    t = torch.tensor([value], dtype=torch.int64, device=device)
    with collective("the broadcast of rank 0's decision"):
        tdist.broadcast(t, src=0)
    return int(t.item())


def first_bad_step(bad_step: torch.Tensor) -> int:
    """The earliest step at which any process saw a non-finite loss (-1: none), so that all
    processes stop together instead of one waiting forever in the next all-reduce."""
    if not active():
        return int(bad_step.item())
    none = torch.iinfo(torch.int64).max
    t = torch.where(bad_step < 0, none, bad_step).to(torch.int64).reshape(1).clone()
    with collective("the all_reduce of the first non-finite step"):
        tdist.all_reduce(t, op=tdist.ReduceOp.MIN)
    step = int(t.item())
    return -1 if step == none else step


@torch.no_grad()
def average_buffers(model: nn.Module) -> None:
    """Average floating-point buffers (BN running mean/var) over the processes, in place.

    Integer buffers (num_batches_tracked) are equal everywhere already. With SyncBN the running
    statistics are equal too and this changes nothing.
    """
    if not active():
        return
    buffers = [b for b in model.buffers() if b.is_floating_point()]
    if not buffers:
        return
    flat = torch.cat([b.reshape(-1).to(torch.float64) for b in buffers])
    with collective("the all_reduce of the BN running statistics"):
        tdist.all_reduce(flat, op=tdist.ReduceOp.SUM)
    flat /= tdist.get_world_size()
    offset = 0
    for b in buffers:
        n = b.numel()
        b.copy_(flat[offset:offset + n].view_as(b))
        offset += n


def state_checksum(model: nn.Module) -> str:
    """sha256 over the state dict's names and bytes: equal only for bit-identical weights."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def replica_report(checksum: str) -> dict[str, Any]:
    """{} in a single process; else the world size and every process's weight ``checksum``
    (``state_checksum``), which DDP keeps identical (a mismatch is a bug, reported on stderr by
    rank 0)."""
    if not active():
        return {}
    sums: list[Any] = [None] * tdist.get_world_size()
    with collective("the all_gather of the weight checksums"):
        tdist.all_gather_object(sums, checksum)
    identical = len(set(sums)) == 1
    if not identical and is_main():
        print("wrn: warning: the processes ended with different weights (checksums in log.jsonl)", file=sys.stderr)
    return {"world_size": len(sums), "replica_checksums": sums, "replicas_identical": identical}
