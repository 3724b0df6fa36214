"""torchrun + DDP on the CPU: 2 gloo processes train like one process with the same global batch.

Real `torchrun --nproc-per-node 2 -m wrn train` subprocesses on a tiny WRN and a tiny image folder.

Why the training images are all one picture (with different labels): without SyncBN (CUDA only)
each process normalises with the BatchNorm statistics of its own half of the batch, so a
2-process run is not the same computation as one process on the whole batch - unless every
slice of every batch has the statistics of the whole batch, which is true when all images are
equal. Then the two runs differ only by float rounding (measured: 1e-5 of the distance the weights
travel; doubling the lr, a typical DDP bug, moves them by ~1x that distance), and the gradient
still depends on which labels each process got, so wrong sharding or a summed instead of averaged
gradient shows. The test images are varied (evaluation uses running statistics), 33 of them so
that the sharded evaluation has uneven and empty shards.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from wrn.cli import main as wrn_main
from wrn.errors import UserError
from wrn.models import create_model
from wrn.train import dist

from helpers import write_image_folder  # tests/helpers.py

ARGS = ["model.name=wrn-10-1", "model.dropout=0", "data.augment=false", "data.val_size=0", "train.epochs=2",
        "train.batch_size=16", "train.eval_batch_size=8", "train.keep_every=1", "optim.lr=0.05",
        "accel.device=cpu", "accel.precision=fp32", "accel.compile=false", "accel.channels_last=false",
        "log.every_steps=4"]
CLASSES = 4


def write_data(root: Path, n_train: int = 128, n_test: int = 33, size: int = 16) -> Path:
    rng = np.random.default_rng(0)
    picture = rng.integers(0, 256, (size, size, 3)).astype(np.uint8)
    for split, n in (("train", n_train), ("test", n_test)):
        for i in range(n):
            label = (7 * i + i // 5) % CLASSES
            image = picture if split == "train" else rng.integers(0, 256, picture.shape).astype(np.uint8)
            d = root / split / f"class{label}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(d / f"{i:04d}.png")
    return root


def torchrun(*args: str, timeout: int = 120) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "wrn", "train", "--quiet", *args]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]


def weights(run: Path, sub: str = "checkpoint") -> dict[str, torch.Tensor]:
    return load_file(run / sub / "model.safetensors")


def records(run: Path, kind: str) -> list[dict]:
    lines = (run / "log.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def assert_same_training(run: Path, ref: Path, init: dict[str, torch.Tensor]) -> None:
    """Same weights up to float rounding, measured against how far training moved them."""
    a, b = weights(run), weights(ref)
    assert a.keys() == b.keys()
    params = [k for k in a if "running_" not in k and "num_batches" not in k]
    norm = lambda d: sum(float((d[k].double() ** 2).sum()) for k in params) ** 0.5  # noqa: E731
    travelled = norm({k: b[k] - init[k] for k in params})
    assert travelled > 0.1
    assert norm({k: a[k] - b[k] for k in params}) < 1e-3 * travelled
    for k in a:
        if "running_mean" in k:  # averaged over the processes = the one-process statistics
            assert torch.allclose(a[k], b[k], rtol=1e-3, atol=1e-4), k
        if "num_batches" in k:
            assert torch.equal(a[k], b[k])
    # Logged metrics are over all processes: the same numbers as one process.
    ref_epochs = {r["epoch"]: r for r in records(ref, "epoch")}
    for x in records(run, "epoch"):  # a resumed run logged only the epochs it trained
        y = ref_epochs[x["epoch"]]
        assert x["train_loss"] == pytest.approx(y["train_loss"], rel=1e-4)
        assert x["train_acc"] == y["train_acc"]
    end, ref_summary = records(run, "end")[0], json.loads((ref / "summary.json").read_text())
    assert end["test_acc"] == ref_summary["test_acc"]
    assert end["test_loss"] == pytest.approx(ref_summary["test_loss"], rel=1e-4)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    data = write_data(root / "data")
    common = ["--data", str(data), *ARGS, f"data.cache_dir={root / 'cache'}"]
    assert wrn_main(["train", "--quiet", "--out", str(root / "one"), *common]) == 0  # also fills the cache
    torchrun("--out", str(root / "two"), *common)
    torch.manual_seed(0)  # the engine's initial weights: seed train.seed, then build
    init = create_model("wrn-10-1", num_classes=CLASSES).state_dict()
    return root, common, init


def test_two_processes_end_identical_and_match_one_process(runs):
    root, _, init = runs
    two, one = root / "two", root / "one"
    end = records(two, "end")[0]
    assert end["world_size"] == 2 and end["replicas_identical"]
    assert len(set(end["replica_checksums"])) == 1  # each rank hashed its own weights and BN buffers
    assert records(two, "start")[0]["world_size"] == 2
    assert_same_training(two, one, init)
    # Rank 0 alone wrote: one log, no second summary or stray temporary files.
    assert sorted(p.name for p in two.iterdir()) == ["checkpoint", "checkpoints", "config.yaml", "curves.png",
                                                      "log.jsonl", "summary.json"]
    summary = json.loads((two / "summary.json").read_text())
    assert summary["finished"] and summary["weights_sha256"] == end["replica_checksums"][0]
    # ... and the hash of the weights the checkpoint holds.
    assert summary["weights_sha256"] == dist.state_checksum(SimpleNamespace(state_dict=lambda: weights(two)))


def resume_dir(src: Path, dst: Path) -> Path:
    """A run stopped after epoch 1: its config and the checkpoint kept at that epoch."""
    dst.mkdir()
    shutil.copy(src / "config.yaml", dst / "config.yaml")
    shutil.copytree(src / "checkpoints" / "epoch-0001", dst / "checkpoint")
    return dst


def test_resume_on_a_different_number_of_processes(runs):
    root, _, init = runs
    # Same global batch, so the same steps per epoch, data order and lr: 1 -> 2 and 2 -> 1 processes.
    up = resume_dir(root / "one", root / "one-then-two")
    torchrun("--resume", str(up))
    assert records(up, "resume")[0]["world_size"] == 2
    assert_same_training(up, root / "one", init)
    down = resume_dir(root / "two", root / "two-then-one")
    assert wrn_main(["train", "--quiet", "--resume", str(down)]) == 0
    assert_same_training(down, root / "one", init)


def test_a_budget_under_torchrun_decides_once_for_both_processes(runs):
    """--budget under torchrun: rank 0's timing decides the steps and both ranks follow, the
    narrowing to a smaller WRN included (a rank that built another net would hang DDP or differ)."""
    root, common, _ = runs
    run = root / "budget"
    torchrun("--out", str(run), *common, "--budget", "20s", "model.name=wrn-10-2", "train.budget_min_epochs=1000")
    end, summary = records(run, "end")[0], json.loads((run / "summary.json").read_text())
    assert end["world_size"] == 2 and end["replicas_identical"]
    assert summary["model"] == "wrn-10-1" and summary["configured_model"] == "wrn-10-2"
    assert summary["budget_steps"] == summary["steps"] >= 1 and summary["wall_time_s"] <= 20 + 20


def test_resume_with_another_global_batch_is_refused(runs, capsys):
    root, _, _ = runs
    run = resume_dir(root / "one", root / "other-batch")
    assert wrn_main(["train", "--quiet", "--resume", str(run), "train.batch_size=32"]) == 2
    assert "--resume cannot change train.batch_size" in capsys.readouterr().err  # refused before any work


def test_single_process_helpers_are_no_ops(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    assert dist.world() == (0, 1, 0) and dist.is_main() and not dist.active()
    t = torch.tensor(2.5)
    assert dist.all_sum(t, 3) == (t, 3)
    assert dist.first_bad_step(torch.tensor(-1)) == -1
    model = create_model("wrn-10-1", num_classes=2)
    assert dist.wrap_model(model, torch.device("cpu"), sync_bn=True) is model
    assert dist.replica_report(dist.state_checksum(model)) == {}
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert dist.world() == (3, 4, 1) and not dist.is_main()


def test_sync_bn_on_cpu_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(dist, "active", lambda: True)  # as under torchrun with gloo
    with pytest.raises(UserError, match="accel.sync_bn=true needs CUDA"):
        dist.wrap_model(create_model("wrn-10-1", num_classes=2), torch.device("cpu"), sync_bn=True)


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")
def test_sync_bn_on_two_gpus_matches_one_gpu(tmp_path):
    """NCCL + SyncBatchNorm: with varied images the BN statistics are the global batch's, so 2 GPUs
    match 1 GPU (tolerance for cuDNN/TF32 rounding) - what the CPU tests cannot show."""
    write_image_folder(tmp_path / "data", 128, 33, 16, classes=CLASSES, seed=1)
    common = ["--data", str(tmp_path / "data"), *ARGS, "accel.device=cuda", "accel.sync_bn=true",
              f"data.cache_dir={tmp_path / 'cache'}"]
    assert wrn_main(["train", "--quiet", "--out", str(tmp_path / "one"), *common]) == 0
    torchrun("--out", str(tmp_path / "two"), *common)
    end = records(tmp_path / "two", "end")[0]
    assert end["world_size"] == 2 and end["replicas_identical"]
    a, b = weights(tmp_path / "two"), weights(tmp_path / "one")
    torch.manual_seed(0)
    init = create_model("wrn-10-1", num_classes=CLASSES).state_dict()
    params = [k for k in a if "running_" not in k and "num_batches" not in k]
    diff = sum(float(((a[k] - b[k]).double() ** 2).sum()) for k in params) ** 0.5
    travelled = sum(float(((b[k] - init[k]).double() ** 2).sum()) for k in params) ** 0.5
    assert diff < 1e-2 * travelled


@pytest.mark.parametrize("world_size", ["2", None])
def test_a_torchrun_worker_leaves_with_its_output_and_status_but_without_teardown(tmp_path, world_size):
    """Under torchrun (WORLD_SIZE > 1) `wrn` ends the process as soon as the command is done
    (dist.exit_worker): no interpreter teardown, where a gloo thread once aborted a finished run, so an
    atexit hook never runs; the command's output (piped, so buffered) and exit status are all there.
    Control: a single process tears down as usual (the hook runs)."""
    (tmp_path / "sitecustomize.py").write_text(
        "import atexit, os\natexit.register(lambda: open(os.environ['TEARDOWN_MARK'], 'w').close())\n")
    mark = tmp_path / "torn-down"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "PYTHONUNBUFFERED")}
    env.update(PYTHONPATH=os.pathsep.join(filter(None, [str(tmp_path), env.get("PYTHONPATH")])),
               TEARDOWN_MARK=str(mark), **({"WORLD_SIZE": world_size} if world_size else {}))
    for argv, status, stream, said in ((["info", "wrn-10-1"], 0, "stdout", "wrn-10-1"),
                                       (["train", "--resume", str(tmp_path / "none")], 2, "stderr", "not a run directory")):
        mark.unlink(missing_ok=True)
        out = subprocess.run([sys.executable, "-m", "wrn", *argv], env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == status, out.stderr[-2000:]
        assert said in getattr(out, stream)
        assert mark.exists() == (world_size is None)


def test_main_called_in_a_process_that_has_a_world_size_returns_its_status(monkeypatch, capsys):
    """Only the program (``wrn.cli.entry``) ends a torchrun worker: ``main`` itself returns, as a
    Ray task or any caller in a process that happens to have WORLD_SIZE set needs."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert wrn_main(["info", "wrn-10-1"]) == 0
    assert "wrn-10-1" in capsys.readouterr().out


def test_sam_and_the_moving_average_under_torchrun_match_one_process(runs):
    """SAM's ascent uses the gradient of the global batch (DDP all-reduces the first pass too), so
    two processes train like one; the moving average, updated on every rank from identical
    weights, matches too. Controls: SAM itself moves the weights away from the plain SGD run; and
    (measured once, by hand) an ascent from each process's own gradient (DDP's no_sync on the first
    pass, Foret et al.'s per-accelerator default) parts the runs by ~0.7x the distance travelled.
    (A small rho: with one picture the gradient shrinks to nearly zero, and normalising it to length
    rho amplifies its rounding; rho 0.5 parts the two runs by a quarter of the distance travelled.)"""
    root, common, init = runs
    extra = ["optim.sam_rho=0.05", "train.ema=0.8"]
    assert wrn_main(["train", "--quiet", "--out", str(root / "sam-one"), *common, *extra]) == 0
    torchrun("--out", str(root / "sam-two"), *common, *extra)
    two, one = root / "sam-two", root / "sam-one"
    end = records(two, "end")[0]
    assert end["world_size"] == 2 and end["replicas_identical"]
    assert_same_training(two, one, init)
    a, b = (load_file(run / "checkpoint" / "ema.safetensors") for run in (two, one))
    # running_var is left out as above: BN's unbiased variance of a half batch is n/(n-1) larger.
    for k in (k for k in b if "running_var" not in k):
        assert torch.allclose(a[k].double(), b[k].double(), rtol=1e-3, atol=1e-4), k
    summary = json.loads((two / "summary.json").read_text())
    assert summary["weights"] == "ema" and summary["test_acc_raw"] is not None
    sam, plain = weights(one), weights(root / "one")  # control: SAM is not plain SGD here
    assert max(float((sam[k] - plain[k]).abs().max()) for k in sam if "weight" in k) > 1e-3
