"""The speed switches (wrn.train.accel): each option is honoured on CPU, and the fast path computes
what the plain fp32 eager path computes, within bf16 tolerance. Tiny models, 8x8 images."""

from __future__ import annotations

import copy
import platform
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

from wrn.errors import UserError
from wrn.models import create_model
from wrn.train import accel
from wrn.train import step as train_steps

CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(width: int = 1) -> nn.Module:
    torch.manual_seed(0)
    return create_model(f"wrn-10-{width}", num_classes=10)


def batch(n: int = 8, size: int = 8, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g), torch.randint(0, 10, (n,), generator=g)


def sgd(model: nn.Module) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)


def test_channels_last_is_applied_to_the_conv_weights():
    model = accel.prepare_model(tiny(), CPU, channels_last=True)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    plain = accel.prepare_model(tiny(), CPU, channels_last=False)
    assert all(m.weight.is_contiguous() for m in plain.modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp32", torch.float32)])
def test_precision_sets_the_activation_dtype_and_keeps_fp32_weights_and_logits(precision, dtype):
    model = tiny()
    seen = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
    x, _ = batch()
    logits = train_steps.make_eval_step(model, precision=precision, device=CPU)(x)
    assert seen and set(seen) == {dtype}
    assert logits.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_bf16_channels_last_step_matches_the_fp32_reference():
    """One training step: same loss and same updated weights as plain fp32 eager, to bf16 precision."""
    x, y = batch(16)
    ref = tiny(2)
    init = [p.detach().clone() for p in ref.parameters()]
    fast = accel.prepare_model(copy.deepcopy(ref), CPU, channels_last=True)
    ref_opt, fast_opt = sgd(ref), sgd(fast)
    ref_step = train_steps.make_train_step(ref, ref_opt, precision="fp32", device=CPU, fused_optimizer=False)
    fast_step = train_steps.make_train_step(fast, fast_opt, precision="bf16", device=CPU)
    ref_loss, ref_correct = ref_step(x, y)
    fast_loss, fast_correct = fast_step(x.contiguous(memory_format=torch.channels_last), y)
    assert isinstance(fast_loss, torch.Tensor) and fast_loss.dtype == torch.float32  # device tensors, fp32 loss
    assert fast_loss.item() == pytest.approx(ref_loss.item(), rel=2e-2)
    assert abs(int(fast_correct) - int(ref_correct)) <= 2
    assert all(q.dtype == torch.float32 for q in fast.parameters())  # fp32 master weights
    # The update (lr x gradient) points the same way: bf16 rounding perturbs each gradient by a few
    # % (BN's backward subtracts means), so compare the whole update's direction and size.
    d_ref = torch.cat([(p - p0).flatten() for p0, p in zip(init, ref.parameters())])
    d_fast = torch.cat([(q - p0).flatten() for p0, q in zip(init, fast.parameters())])
    assert torch.nn.functional.cosine_similarity(d_ref, d_fast, 0) > 0.97
    assert (d_fast - d_ref).norm() < 0.25 * d_ref.norm()
    # Eval logits agree too.
    ref.eval(), fast.eval()
    a = train_steps.make_eval_step(ref, precision="fp32", device=CPU)(x)
    b = train_steps.make_eval_step(fast, precision="bf16", device=CPU)(x.contiguous(memory_format=torch.channels_last))
    assert (a - b).abs().max() <= 0.05 * a.abs().max() + 1e-2


@pytest.mark.parametrize("channels_last, compile", [(False, False), (True, True)])
def test_flip_eval_step_gives_logits_of_the_mean_prediction_over_each_image_and_its_mirror(channels_last, compile):
    model = accel.prepare_model(tiny(), CPU, channels_last=channels_last).eval()
    x, _ = batch()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    plain = train_steps.make_eval_step(model, precision="fp32", device=CPU)
    tta = train_steps.make_eval_step(model, precision="fp32", device=CPU, flip=True, compile=compile)
    mean = (plain(x).softmax(1) + plain(x.flip(3)).softmax(1)) / 2
    out = tta(x)
    torch.testing.assert_close(out.softmax(1), mean, atol=1e-5, rtol=1e-5)  # read as logits: the mean
    torch.testing.assert_close(out.exp().sum(1), torch.ones(len(x)), atol=1e-5, rtol=0)  # log-probabilities
    assert (out.softmax(1) - plain(x).softmax(1)).abs().max() > 1e-3  # control: the flip changes the answer
    symmetric = torch.cat([x[..., :4], x[..., :4].flip(3)], dim=3)  # each image its own mirror
    torch.testing.assert_close(tta(symmetric), plain(symmetric).log_softmax(1), atol=1e-5, rtol=1e-5)


def test_fast_optimizer_switches_implementation_but_not_the_update():
    x, y = batch()
    a, b = tiny(), tiny()
    opt_a, opt_b = sgd(a), sgd(b)
    accel.fast_optimizer(opt_b, CPU)
    assert all(g["foreach"] and not g["fused"] for g in opt_b.param_groups)
    for model, opt in ((a, opt_a), (b, opt_b)):
        step = train_steps.make_train_step(model, opt, precision="fp32", device=CPU, fused_optimizer=False)
        for _ in range(3):
            step(x, y)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.allclose(p, q, rtol=1e-5, atol=1e-6)


def test_compiled_step_matches_eager():
    """torch.compile (with the CUDA-graph switch on, which CPU ignores) trains like eager.

    Uses the user's persistent compile cache, as `wrn train` does: the first run on a machine
    compiles (~1 min on 2 busy cores), later runs load the kernels (seconds)."""
    x, y = batch(8)
    eager, compiled = tiny(), tiny()
    e_opt, c_opt = sgd(eager), sgd(compiled)
    e_step = train_steps.make_train_step(eager, e_opt, precision="fp32", device=CPU)
    c_step = train_steps.make_train_step(compiled, c_opt, precision="fp32", device=CPU, compile=True, cuda_graphs=True)
    for _ in range(2):
        e_loss, e_correct = e_step(x, y)
        c_loss, c_correct = c_step(x, y)
        assert c_loss.item() == pytest.approx(e_loss.item(), rel=1e-4)
        assert int(c_correct) == int(e_correct)
    for p, q in zip(eager.parameters(), compiled.parameters()):
        assert torch.allclose(p, q, rtol=1e-3, atol=1e-5)


def test_should_compile_skips_short_runs_and_says_why(tmp_path, monkeypatch):
    assert accel.should_compile(False, 10**6, "cpu", "bf16") == (False, "accel.compile=false")
    need = accel.MIN_STEPS_TO_COMPILE["cpu"]
    ok, reason = accel.should_compile(True, need - 1, "cpu", "bf16")
    assert not ok and "too short" in reason and "eager" in reason
    assert accel.should_compile(True, need, "cpu", "bf16")[0]


def test_fp32_on_a_cpu_runs_eager_and_says_why():
    ok, reason = accel.should_compile(True, 10**6, "cpu", "fp32")
    assert not ok and "fp32" in reason and "eager" in reason
    assert accel.should_compile(True, 10**6, "cpu", "bf16")[0]  # controls: bf16 on a CPU, fp32 on a GPU
    assert accel.should_compile(True, 10**6, "cuda", "fp32")[0]


def test_should_compile_depends_on_the_config_alone(tmp_path, monkeypatch):
    # A warm compile cache (a previous compiled run) must not change the decision: the same
    # config would otherwise train compiled one day and eager the next, with other weights.
    need = accel.MIN_STEPS_TO_COMPILE["cpu"]
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "cache"))
    cold = [accel.should_compile(True, n, "cpu", "bf16") for n in (need - 1, need)]
    (tmp_path / "cache" / "fxgraph" / "ab").mkdir(parents=True)
    assert [accel.should_compile(True, n, "cpu", "bf16") for n in (need - 1, need)] == cold


def test_compile_cache_dir_default_and_override(tmp_path, monkeypatch):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert accel.compile_cache_dir() == tmp_path / "xdg" / "wrn" / "inductor"
    # Importing torch._inductor writes torch's /tmp default into the variable: still ours.
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())
    assert accel.compile_cache_dir() == tmp_path / "xdg" / "wrn" / "inductor"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert accel.compile_cache_dir() == tmp_path / "mine"
    assert (tmp_path / "mine").is_dir()


def test_bad_precision_and_compile_mode_are_user_errors():
    model = tiny()
    with pytest.raises(UserError, match="fp32 or bf16"):
        train_steps.make_train_step(model, sgd(model), precision="fp16", device=CPU)
    with pytest.raises(UserError, match="compile mode"):
        train_steps.make_eval_step(model, precision="fp32", device=CPU, compile=True, compile_mode="turbo")


def test_thread_tuner_keeps_the_faster_thread_count():
    """accel.threads=auto: probes each candidate for a few steps, then runs with the fastest."""
    cost = {2: 3.0, 1: 1.0}  # a busy machine: two threads are slower than one
    now, current, calls = [0.0], [2], []

    def set_threads(n):
        calls.append(n)
        current[0] = n

    tuner = accel.ThreadTuner((2, 1), period=20, probe=2, skip=1, clock=lambda: now[0], set_threads=set_threads)
    used = []
    for _ in range(12):
        tuner.before_step()
        used.append(current[0])
        now[0] += cost[current[0]]
        tuner.after_step()
    assert used[:5] == [2, 2, 2, 1, 1]  # skip, then probe 2 threads twice, then 1 thread twice
    assert tuner.best == 1 and set(used[5:]) == {1}
    cost.update({2: 0.5})  # the other job finished: the next probe window switches back
    for _ in range(20):
        tuner.before_step()
        now[0] += cost[current[0]]
        tuner.after_step()
    assert tuner.best == 2 and calls[-1] == 2


def test_threads_setting_is_validated_and_applied():
    before = torch.get_num_threads()
    try:
        assert accel.make_thread_tuner(1, CPU) is None and torch.get_num_threads() == 1
        assert isinstance(accel.make_thread_tuner("auto", CPU), accel.ThreadTuner)
        assert accel.make_thread_tuner(None, CPU) is None
        with pytest.raises(UserError, match="accel.threads"):
            accel.make_thread_tuner("many", CPU)
    finally:
        torch.set_num_threads(before)


@pytest.mark.gpu
def test_cuda_graph_step_matches_eager_on_gpu():
    """On CUDA: compile + CUDA graphs + fused SGD train like eager fp32, to bf16 precision."""
    cuda = torch.device("cuda")
    x, y = (t.to(cuda) for t in batch(32))
    eager = accel.prepare_model(tiny(2), cuda, channels_last=False)
    fast = accel.prepare_model(tiny(2), cuda, channels_last=True)
    e_opt, f_opt = sgd(eager), sgd(fast)
    e_step = train_steps.make_train_step(eager, e_opt, precision="fp32", device=cuda, fused_optimizer=False)
    f_step = train_steps.make_train_step(fast, f_opt, precision="bf16", device=cuda, compile=True, cuda_graphs=True)
    assert all(g["fused"] for g in f_opt.param_groups)
    for _ in range(3):  # the graphs are recorded after warm-up runs: compare every replay
        e_loss, _ = e_step(x, y)
        f_loss, _ = f_step(x.contiguous(memory_format=torch.channels_last), y)
        assert f_loss.item() == pytest.approx(e_loss.item(), rel=3e-2)


GLIBC = platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not GLIBC, reason="keep_freed_memory tunes glibc's malloc")
def test_keep_freed_memory_stops_page_faulting_freed_buffers_back_in():
    """A 64 MB buffer freed and allocated again is page-faulted in afresh each time with glibc's
    defaults (~16k faults); once freed memory is kept, the next allocation reuses it. Run in a
    child process: the setting is process-wide and cannot be undone."""
    script = """
import resource, torch
from wrn.train import accel
def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(4):
        torch.ones(16 << 20)  # 64 MB written, then freed
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
torch.set_num_threads(1)
faults()
default = faults()
kept = accel.keep_freed_memory(torch.device("cpu"))
faults()
print(default, kept, min(faults() for _ in range(3)))  # the best of 3: other jobs on the machine add noise
"""
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True).stdout
    default, kept, after = out.split()
    assert kept == "True"
    # Each 64 MB allocation is faulted in again: 16,384 pages of 4 KB (32 with 2 MB huge pages).
    assert int(default) >= 4 * 32
    assert int(after) < int(default) / 10


def test_keep_freed_memory_is_a_cpu_setting():
    assert accel.keep_freed_memory(torch.device("cuda")) is False
