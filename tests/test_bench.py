"""`wrn bench`: the JSON a script reads, the table a person reads, and the errors. Tiny model,
8x8 images, one step per block: the figures are not checked (a timing is never a test)."""

from __future__ import annotations

import json

import pytest
import torch

from wrn.bench import BenchSettings, bench_config
from wrn.cli import build_parser, main
from wrn.train import accel, hardware
from wrn.train import step as train_steps
from wrn.train.config import load_config

pytestmark = pytest.mark.usefixtures("one_thread")


TINY = ["wrn-10-1", "--input", "8", "--batch-size", "4", "--steps", "1", "--warmup", "1", "--repeats", "2",
        "accel.compile=false", "--peak-size", "128"]


def test_json_has_both_modes_and_every_figure(capsys):
    assert main(["bench", *TINY, "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["model"] == "wrn-10-1" and r["device"] == "cpu" and r["params"] > 0
    assert r["forward_gflop_per_image"] > 0
    assert set(r["matmul_peak_gflops"]) == set(r["matmul_peak_n"]) == {"bf16", "fp32"}
    assert all(n <= 128 for n in r["matmul_peak_n"].values())  # --peak-size caps the matmul
    assert {"cpu", "isa", "native_bf16", "torch_cpu_capability", "cpu_threads", "torch"} <= set(r["machine"])
    assert r["settings"]["accel"]["compile"] is False and r["settings"]["batch_size"] == 4
    assert [m["mode"] for m in r["modes"]] == ["fast", "reference"]
    fast, ref = r["modes"]
    # The quick preset's precision (auto: bf16 where native, else fp32), resolved for this CPU.
    assert (fast["precision"], fast["channels_last"], fast["compile"]) == (
        accel.resolve_precision(r["settings"]["accel"]["precision"], torch.device("cpu")), True, False)
    assert (ref["precision"], ref["channels_last"], ref["compile"]) == ("fp32", False, False)
    for mode in r["modes"]:
        for what in ("train", "eval"):
            f = mode[what]
            assert set(f) == {"img_per_s", "img_per_s_std", "ms_per_step", "ms_per_step_std", "gflops",
                              "pct_of_peak"}
            assert f["img_per_s"] > 0 and f["ms_per_step"] > 0 and f["gflops"] > 0
            assert mode[f"{what}_warmup_s"] >= 0
        assert mode["peak_memory_mb"] > 0 and mode["memory_kind"] == "peak_rss"
    assert set(r["speedup"]) == {"train", "eval"}
    assert r["command"].startswith("wrn bench wrn-10-1 --batch-size 4") and "accel.compile=false" in r["command"]
    assert "keep_memory" in fast and "accel.keep_memory=true" in r["command"]


def test_no_keep_memory_is_recorded_and_in_the_command(capsys):
    assert main(["bench", *TINY, "--no-reference", "--no-eval", "accel.keep_memory=false", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["modes"][0]["keep_memory"] is False and "accel.keep_memory=false" in r["command"]


def test_reference_runs_with_the_default_allocator_unless_asked(capsys):
    assert main(["bench", *TINY, "--no-eval", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["modes"][1]["keep_memory"] is False and "--reference-keep-memory" not in r["command"]
    assert main(["bench", *TINY, "--no-eval", "--reference-keep-memory", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["modes"][1]["keep_memory"] is r["modes"][0]["keep_memory"] and "--reference-keep-memory" in r["command"]


def test_table_without_reference(capsys):
    assert main(["bench", *TINY, "--no-reference", "accel.precision=fp32", "accel.channels_last=false", "--no-eval"]) == 0
    out = capsys.readouterr().out
    assert "fast" in out and "train" in out and "reference" not in out.split("command:")[0]
    assert "command: wrn bench wrn-10-1" in out and "--no-reference" in out
    assert f"CPU: {hardware.cpu_model()}, {hardware.cpu_isa()}" in out  # the CPU model and its ISA


def test_fast_mode_defaults_are_the_quick_presets_accel_section():
    """One declaration of the fast path: the bench's defaults follow the preset's accel section."""
    quick = load_config("quick").accel
    assert bench_config("wrn-16-4").accel == quick
    assert quick.precision in ("auto", "bf16") and quick.channels_last and quick.compile
    cfg = bench_config("wrn-16-4", ["accel.precision=fp32", "accel.compile=false", "model.num_classes=100"])
    assert (cfg.accel.precision, cfg.accel.compile, cfg.accel.channels_last) == ("fp32", False, True)
    assert BenchSettings(config=cfg).num_classes == 100 and cfg.model.name == "wrn-16-4"


def test_overrides_may_follow_flags_and_the_command_reproduces_them(capsys):
    argv = ["wrn-10-1", "--input", "8", "--batch-size", "4", "accel.precision=fp32", "--steps", "1", "--warmup", "0",
            "--repeats", "1", "accel.compile=false", "--no-reference", "--no-eval", "--peak-size", "128",
            "accel.channels_last=false", "accel.threads=1", "model.num_classes=7", "--json"]
    assert main(["bench", *argv]) == 0
    r = json.loads(capsys.readouterr().out)
    fast = r["modes"][0]
    assert (fast["precision"], fast["compile"], fast["channels_last"]) == ("fp32", False, False)
    assert r["settings"]["model"]["num_classes"] == 7
    command = r["command"].split()
    assert {"accel.precision=fp32", "accel.compile=false", "accel.channels_last=false", "accel.threads=1",
            "model.num_classes=7"} <= set(command)
    assert "accel.compile_mode=default" not in command  # keys left at the bench's defaults stay out
    args = build_parser().parse_args(command[1:])  # the recorded command parses back to the same config
    assert bench_config(args.model, args.overrides) == bench_config("wrn-10-1", argv_overrides(argv))


def argv_overrides(argv: list[str]) -> list[str]:
    return [a for a in argv if "=" in a]


@pytest.mark.parametrize("args, message", [
    (["wrn-10-1", "--steps", "0"], "--steps must be at least 1"),
    (["wrn-10-1", "--reference-keep-memory", "accel.keep_memory=false"], "process-wide"),
    (["wrn-9-1"], "depth 9"),
    (["wrn-10-1", "accel.precision=fp16"], "unknown precision 'fp16'"),  # the config's own check
    (["wrn-10-1", "accel.precison=fp32"], "did you mean 'accel.precision'"),
    (["wrn-10-1", "train.epochs=3"], "only model.* and accel.* keys"),
    (["wrn-10-1", "model.name=wrn-16-4"], "first argument"),
    (["wrn-10-1", "precision"], "not section.key=value"),
    pytest.param(["wrn-10-1", "accel.device=cuda:0"], "no CUDA GPU",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")),
])
def test_bad_input_is_one_line_and_exit_2(capsys, args, message):
    assert main(["bench", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("channels_last", [False, True])
def test_fast_mode_feeds_the_memory_format_the_config_asks_for(monkeypatch, channels_last):
    """accel.channels_last=false benchmarks NCHW activations (and true channels_last ones: the control)."""
    seen = []
    make_train_step = train_steps.make_train_step

    def recording(*args, **kwargs):
        step = make_train_step(*args, **kwargs)

        def wrapped(x, y):
            seen.append((x.is_contiguous(), x.is_contiguous(memory_format=torch.channels_last)))
            return step(x, y)
        return wrapped

    monkeypatch.setattr(train_steps, "make_train_step", recording)
    assert main(["bench", *TINY, "--no-reference", "--no-eval", "accel.precision=fp32",
                 f"accel.channels_last={str(channels_last).lower()}", "--json"]) == 0
    assert seen and all(fmt == (not channels_last, channels_last) for fmt in seen)


def test_auto_precision_is_resolved_for_the_device_and_an_explicit_one_is_kept(capsys):
    assert main(["bench", *TINY, "--no-reference", "--no-eval", "accel.precision=auto"]) == 0
    out = capsys.readouterr().out
    assert f"{hardware.auto_precision(torch.device('cpu'))} (accel.precision=auto)" in out
    assert main(["bench", *TINY, "--no-reference", "--no-eval", "accel.precision=bf16", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["modes"][0]["precision"] == "bf16"  # control: asked, not resolved


def test_sam_step_is_timed_when_asked_and_the_command_says_so(monkeypatch, capsys):
    made = []
    real = train_steps.make_train_step
    monkeypatch.setattr(train_steps, "make_train_step", lambda *a, **kw: made.append(kw) or real(*a, **kw))
    assert main(["bench", *TINY, "--no-reference", "--no-eval", "optim.sam_rho=0.05", "optim.sam_adaptive=true",
                 "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert (made[-1]["sam_rho"], made[-1]["sam_adaptive"]) == (0.05, True)
    assert r["modes"][0]["sam"] == "asam" and r["settings"]["optim"] == {"sam_rho": 0.05, "sam_adaptive": True}
    assert {"optim.sam_rho=0.05", "optim.sam_adaptive=true"} <= set(r["command"].split())
    # Control: without the keys the step is plain SGD and the command names no optim key.
    assert main(["bench", *TINY, "--no-reference", "--no-eval", "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert made[-1]["sam_rho"] == 0.0 and plain["modes"][0]["sam"] is None
    assert not any(word.startswith("optim.") for word in plain["command"].split())
