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
"""

from __future__ import annotations

import functools
import hashlib
import os
import sys
import warnings
from typing import Any, Callable, NoReturn, TypeVar

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


def init(device: torch.device) -> bool:
    """Start the default process group from the torchrun environment; False when there is
    nothing to do (a single process, or a group the caller already started)."""
    if world()[1] == 1 or (tdist.is_available() and tdist.is_initialized()):
        return False
    if not tdist.is_available():
        raise UserError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed: run one process")
    kwargs: dict[str, Any] = {"device_id": device} if device.type == "cuda" else {}
    tdist.init_process_group(backend=backend(device), **kwargs)
    return True


def with_process_group(fit: FitFn) -> FitFn:
    """Decorator for ``fit(cfg, ...)``: under torchrun, init the process group before and destroy
    it after, also when the run fails (torchrun then stops the other processes)."""

    @functools.wraps(fit)
    def wrapper(cfg, *args, **kwargs):
        started = init(local_device(resolve_device(cfg.accel.device))) if world()[1] > 1 else False
        try:
            result = fit(cfg, *args, **kwargs)
            if started:
                # Leave together: rank 0 still writes the summary and plots the curves, and a rank
                # that tears gloo down while another is still connected can abort at exit.
                tdist.barrier()
            return result
        finally:
            if started:
                tdist.destroy_process_group()

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
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return bool(t.item())


def broadcast_int(value: int, device: torch.device) -> int:
    """Rank 0's ``value`` on every process (a collective), e.g. the step count a budget chose."""
    if not active():
        return value
    if device.type == "cpu" and tdist.get_backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    t = torch.tensor([value], dtype=torch.int64, device=device)
    tdist.broadcast(t, src=0)
    return int(t.item())


def first_bad_step(bad_step: torch.Tensor) -> int:
    """The earliest step at which any process saw a non-finite loss (-1: none), so that all
    processes stop together instead of one waiting forever in the next all-reduce."""
    if not active():
        return int(bad_step.item())
    none = torch.iinfo(torch.int64).max
    t = torch.where(bad_step < 0, none, bad_step).to(torch.int64).reshape(1).clone()
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
    tdist.all_gather_object(sums, checksum)
    identical = len(set(sums)) == 1
    if not identical and is_main():
        print("wrn: warning: the processes ended with different weights (checksums in log.jsonl)", file=sys.stderr)
    return {"world_size": len(sums), "replica_checksums": sums, "replicas_identical": identical}
