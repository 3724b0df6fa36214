"""Faults: SIGKILL at random moments (inside checkpoint writes too), damaged checkpoints, a full
or read-only output directory. Nothing is lost and every failure explains itself in one line.

The killed runs are real processes running ``wrn train`` (``wrn.cli.main``), forked from this
test process after it has imported torch and the package: a fresh ``python -m wrn`` costs ~3 s of
imports on a busy 2-core machine, which 20 runs cannot afford (tests/test_resume.py covers the
``python -m wrn`` entry point itself). Every run uses one thread, so all are bit-comparable.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import wrn
from wrn.cli import main
from wrn.errors import UserError
from wrn.train import checkpoint
from wrn.train.config import load_config

from helpers import write_image_folder  # tests/helpers.py

STEPS_PER_EPOCH = 6  # 192 train images / batch 32
EPOCHS = 6
TOTAL = EPOCHS * STEPS_PER_EPOCH
ARGS = ["model.name=wrn-10-1", "model.dropout=0.3", f"train.epochs={EPOCHS}", "train.batch_size=32",
        "train.checkpoint_every=2", "train.keep_every=1", "data.val_size=0", "optim.schedule=step",
        "optim.milestones=2", "optim.lr=0.05", "accel.precision=fp32", "accel.channels_last=false",
        "accel.compile=false", "log.every_steps=1", "train.eval_batch_size=64"]


def fork_wrn(argv: list[str], log: Path, env: dict[str, str] | None = None) -> int:
    """Start ``wrn <argv>`` in a forked child (one thread, output to ``log``); returns its pid."""
    pid = os.fork()
    if pid:
        return pid
    rc = 1
    try:
        os.environ.update(env or {})
        torch.set_num_threads(1)
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        sys.stdout = sys.stderr = open(fd, "w", buffering=1, closefd=False)  # not pytest's capture
        rc = main(argv)
    except BaseException:  # noqa: BLE001 - report anything, never return into pytest
        import traceback

        traceback.print_exc()
    finally:
        sys.stderr.flush()
        os._exit(rc)


def wait(pid: int, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError(f"wrn did not finish within {timeout}s")


def last_step(run: Path) -> int:
    try:
        lines = (run / "log.jsonl").read_text().splitlines()
    except OSError:
        return -1
    steps = []
    for line in lines:
        try:
            steps.append(json.loads(line).get("step", -1))
        except ValueError:  # a line being written
            pass
    return max(steps, default=-1)


def inside_write(run: Path) -> bool:
    """A checkpoint is half written: model.safetensors in the temp folder, no state.json yet."""
    return any((t / "model.safetensors").exists() and not (t / "state.json").exists()
               for t in run.glob(".checkpoint.tmp-*"))


def between_renames(run: Path) -> bool:
    """The old checkpoint moved aside, the new one not yet in place: no RUN/checkpoint at all."""
    return (run / checkpoint.OLD).is_dir() and not (run / checkpoint.CHECKPOINT).exists()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    data = write_image_folder(root / "data", 192, 32, 8, classes=3)
    load_config(overrides=ARGS)  # imports what the children need once, here (the meta-device build)
    train = ["train", "--quiet", "--data", str(data), *ARGS, f"data.cache_dir={root / 'cache'}"]
    ref = root / "reference"
    assert wait(fork_wrn([*train, "--out", str(ref)], root / "reference.log")) == 0, (root / "reference.log").read_text()
    return root, train, ref


def assert_same_weights(run: Path, ref: Path, what: str) -> None:
    got, want = load_file(run / "checkpoint" / "model.safetensors"), load_file(ref / "checkpoint" / "model.safetensors")
    assert got.keys() == want.keys()
    for name, tensor in want.items():
        assert torch.equal(got[name], tensor), f"{what}: {name} differs from the uninterrupted run"
    summary, ref_summary = (json.loads((r / "summary.json").read_text()) for r in (run, ref))
    assert (summary["test_acc"], summary["train_loss"]) == (ref_summary["test_acc"], ref_summary["train_loss"]), what


# Trial kinds: kill at a random moment after a random step; kill while a checkpoint is half
# written (the test hook WRN_TEST_CHECKPOINT_PAUSE holds the writer there); kill between the two
# renames of the checkpoint swap; kill twice.
TRIALS = ["random"] * 6 + ["inside_write", "inside_write", "between_renames", "twice"]


def test_sigkill_at_random_moments_then_resume_is_bit_identical(setup):
    root, train, ref = setup
    rng = random.Random(20240509)
    for trial, kind in enumerate(TRIALS):
        run, log = root / f"trial{trial}", root / f"trial{trial}.log"
        resume = ["train", "--quiet", "--resume", str(run)]
        for kill in range(2 if kind == "twice" else 1):
            target = rng.randrange(3, TOTAL - 14)  # >= 15 steps left: the kill always lands before the end
            env = {"WRN_TEST_CHECKPOINT_PAUSE": "0.3"} if kind in ("inside_write", "between_renames") else {}
            pid = fork_wrn([*train, "--out", str(run)] if kill == 0 else resume, log, env)
            deadline = time.monotonic() + 60
            while last_step(run) < target and time.monotonic() < deadline:
                time.sleep(0.002)
            if kind == "inside_write":
                while not inside_write(run) and time.monotonic() < deadline:
                    time.sleep(0.002)
            elif kind == "between_renames":
                while not between_renames(run) and time.monotonic() < deadline:
                    time.sleep(0.002)
            else:
                time.sleep(rng.uniform(0, 0.05))
            in_write, swapping = inside_write(run), between_renames(run)
            os.kill(pid, signal.SIGKILL)
            assert os.waitpid(pid, 0)[1] & 0x7F == signal.SIGKILL, f"trial {trial}: the run ended before the kill"
            if kind == "inside_write":
                assert in_write, f"trial {trial}: not killed inside a checkpoint write"
            if kind == "between_renames":
                assert swapping, f"trial {trial}: not killed between the renames"
        assert not (run / "summary.json").exists()
        before = log.read_text()
        assert wait(fork_wrn(resume, log)) == 0, log.read_text()
        if kind == "between_renames":  # the resume says which checkpoint it used instead
            assert "wrn: warning:" in log.read_text()[len(before):] and ".checkpoint.old" in log.read_text()[len(before):]
        assert_same_weights(run, ref, f"trial {trial} ({kind}, killed after step {target})")
        assert not list(run.glob(".checkpoint.tmp-*")), "a resumed run leaves no half-written checkpoint behind"
        epochs = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
        assert [r["epoch"] for r in epochs if r["kind"] == "epoch"] == list(range(EPOCHS))


def truncate(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


def test_truncated_newest_checkpoint_falls_back_with_a_warning(setup, capsys):
    root, train, ref = setup
    run = root / "truncated"
    shutil.copytree(ref, run)  # (copies: the kept epoch folders are hard links in a real run)
    (run / "summary.json").unlink()  # as if killed right after the last checkpoint
    truncate(run / "checkpoint" / "model.safetensors")
    truncate(run / "checkpoints" / f"epoch-{EPOCHS:04d}" / "model.safetensors")

    model, state = wrn.load_checkpoint(run)
    err = capsys.readouterr().err
    assert "wrn: warning:" in err and "checkpoint/model.safetensors is truncated" in err
    assert f"epoch-{EPOCHS - 1:04d}" in err and state["step"] == (EPOCHS - 1) * STEPS_PER_EPOCH

    # Resuming goes back to that checkpoint and still ends bit-identical.
    log = root / "truncated.log"
    assert wait(fork_wrn(["train", "--quiet", "--resume", str(run)], log)) == 0, log.read_text()
    assert "is truncated" in log.read_text()
    assert_same_weights(run, ref, "resume from the kept checkpoint")


# Where the only checkpoint lies: RUN/checkpoint, or RUN/.checkpoint.old when a kill came between
# the swap's two renames (no RUN/checkpoint at all; a resume takes the previous one).
@pytest.mark.parametrize("only", [checkpoint.CHECKPOINT, checkpoint.OLD])
def test_truncated_checkpoint_without_fallback_is_an_error_not_a_restart(setup, capsys, only):
    root, train, ref = setup
    run = root / f"no-fallback{only}"
    shutil.copytree(ref, run)
    shutil.rmtree(run / "checkpoints")
    (run / "summary.json").unlink()
    (run / checkpoint.CHECKPOINT).rename(run / only)
    truncate(run / only / "optimizer.safetensors")
    log_before = (run / "log.jsonl").read_text()

    # Control for the second case: the run does look like one killed before any checkpoint to a
    # check of RUN/checkpoint alone, which would have trained it again from step 0.
    assert (run / checkpoint.CHECKPOINT).exists() == (only == checkpoint.CHECKPOINT)
    assert main(["train", "--quiet", "--resume", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("wrn: error: no complete checkpoint"), err
    assert f"{only}/optimizer.safetensors is truncated" in err[0] and "no earlier checkpoint is kept" in err[0]
    assert (run / "log.jsonl").read_text() == log_before  # nothing was started over


def flip_byte(path: Path) -> None:
    """Flip one bit in the middle of ``path`` (inside the tensor data), keeping its size."""
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 2)
        byte = f.read(1)[0]
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte ^ 0x01]))


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.safetensors"])
def test_bit_flip_in_newest_checkpoint_falls_back_with_a_warning(setup, capsys, name):
    root, train, ref = setup
    run = root / f"flipped-{name}"
    shutil.copytree(ref, run)
    (run / "summary.json").unlink()  # as if killed right after the last checkpoint
    last = run / "checkpoints" / f"epoch-{EPOCHS:04d}"  # in a real run, hard links to the same files
    for ckpt in (run / "checkpoint", last):
        flip_byte(ckpt / name)

    # Control: the sizes match, and the flipped file parses to other values without complaint.
    assert checkpoint.read_state(run / "checkpoint", verify=False) is not None
    got, want = load_file(run / "checkpoint" / name), load_file(ref / "checkpoint" / name)
    assert got.keys() == want.keys() and any(not torch.equal(got[k], want[k]) for k in want)

    # wrn eval on that one checkpoint alone (nothing to fall back to): one line naming the file.
    alone = root / f"alone-{name}"
    shutil.copytree(run / "checkpoint", alone / "checkpoint")
    data = train[train.index("--data") + 1]
    assert main(["eval", str(alone / "checkpoint"), "--data", data]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("wrn: error: no complete checkpoint"), err
    assert f"checkpoint/{name} is damaged" in err[0]

    # Resuming falls back to the newest undamaged checkpoint, says so, and still ends bit-identical.
    log = root / f"flipped-{name}.log"
    assert wait(fork_wrn(["train", "--quiet", "--resume", str(run)], log)) == 0, log.read_text()
    warning = [line for line in log.read_text().splitlines() if line.startswith("wrn: warning:")]
    assert len(warning) == 1 and f"checkpoint/{name} is damaged" in warning[0], warning
    assert f"epoch-{EPOCHS - 1:04d}" in warning[0]
    assert_same_weights(run, ref, f"resume after a bit flip in {name}")


def _failing_write(fail_on: str, after: int, code: int, writer: str = "write_synced"):
    """checkpoint's ``writer`` (write_synced(path, data) or, for tensors, st_save_file(tensors,
    path)) failing with ``code`` from the (after+1)-th file named ``fail_on...`` on."""
    real, calls = getattr(checkpoint, writer), []

    def write(*args):
        path = args[0] if writer == "write_synced" else args[1]
        if Path(path).name.startswith(fail_on):
            calls.append(path)
            if len(calls) > after:
                raise OSError(code, os.strerror(code), str(path))
        return real(*args)

    return write


@pytest.mark.parametrize("code,words", [(errno.EROFS, "Read-only file system"), (errno.ENOSPC, "No space left")])
def test_unwritable_output_dir_fails_before_training(setup, tmp_path, capsys, monkeypatch, code, words):
    root, train, ref = setup
    monkeypatch.setattr(checkpoint, "write_synced", _failing_write(".write-test", 0, code))
    loaded = []
    monkeypatch.setattr("wrn.train.data.load_splits", lambda cfg: loaded.append(1))
    out = tmp_path / "run"
    assert main([*train, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"wrn: error: cannot write to the output directory {out}"), err
    assert words in err[0] and "choose another --out" in err[0]
    assert not loaded  # failed before the data was read
    assert not out.exists()  # no run directory is left behind


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders: the EROFS case above covers it")
def test_read_only_output_dir_fails_before_training(setup, tmp_path, capsys):
    root, train, ref = setup
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        assert main([*train, "--out", str(parent / "run")]) == 2
    finally:
        parent.chmod(0o755)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot write to the output directory" in err[0], err


def test_disk_full_at_a_checkpoint_keeps_the_previous_one_and_resumes(setup, tmp_path, capsys, monkeypatch):
    root, train, ref = setup
    out = tmp_path / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the reference run, for the bit-identity below
    try:
        with monkeypatch.context() as m:  # the 4th checkpoint (step 8) hits a full disk
            m.setattr(checkpoint, "st_save_file", _failing_write("model.safetensors", 3, errno.ENOSPC, "st_save_file"))
            assert main([*train, "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"wrn: error: cannot write a checkpoint in {out}"), err
        assert "No space left on device" in err[0] and f"the previous checkpoint {out / 'checkpoint'} is kept" in err[0]
        state = checkpoint.read_state(out / "checkpoint")
        assert state is not None and state["step"] == 6  # complete, the one before the failed write
        assert not list(out.glob(".checkpoint.tmp-*"))  # no half-written leftovers
        # Space freed: --resume continues from it and ends as if nothing happened.
        assert main(["train", "--quiet", "--resume", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    assert_same_weights(out, ref, "resume after a full disk")


def test_disk_full_while_logging_is_one_line(setup, tmp_path, capsys, monkeypatch):
    root, train, ref = setup
    from wrn.train.log import RunLog

    real, calls = RunLog.write, []

    def write(self, record):
        calls.append(record)
        if len(calls) > 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, record)

    monkeypatch.setattr(RunLog, "write", write)
    assert main([*train, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["wrn: error: [Errno 28] No space left on device"], err


def _killed_while_holding(lock) -> None:
    """A forked child takes ``lock`` and dies by SIGKILL holding it (as a run killed mid-draw)."""
    pid = os.fork()
    if pid == 0:
        lock.acquire()
        os.kill(os.getpid(), signal.SIGKILL)
    os.waitpid(pid, 0)


def test_a_process_killed_while_drawing_cannot_hang_the_others():
    """The progress bar's lock is this process's own: a forked run killed while drawing (these
    tests kill dozens) leaves nothing held for its parent, whose next bar would otherwise hang."""
    import multiprocessing

    from tqdm import tqdm

    import wrn.train.log  # noqa: F401 - sets tqdm's lock

    lock = tqdm.get_lock()
    _killed_while_holding(lock)
    assert lock.acquire(timeout=5)
    lock.release()
    # Control: tqdm's default includes a process-shared lock, which stays held by the dead child.
    shared = multiprocessing.RLock()
    _killed_while_holding(shared)
    assert not shared.acquire(timeout=0.5)


def test_a_full_disk_under_the_tensor_writer_is_the_same_one_line(tmp_path, monkeypatch):
    """safetensors reports a full disk as its own SafetensorError ("... (os error 28)"): the
    checkpoint writer turns it into the OSError it is, so the run stops with the one-line
    disk-full message and the previous checkpoint kept. Control: the message names the error."""
    from safetensors import SafetensorError

    def full(tensors, path):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(checkpoint, "st_save_file", full)
    model = torch.nn.Linear(2, 2)
    with pytest.raises(UserError) as e:
        checkpoint.save_checkpoint(tmp_path, model=model, optimizer=None, state={})
    assert "No space left on device" in str(e.value) and "\n" not in str(e.value)
    assert not list(tmp_path.glob(".checkpoint.tmp-*"))
