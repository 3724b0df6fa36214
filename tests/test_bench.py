"""`wrn bench`: the JSON a script reads, the table a person reads, and the errors. Tiny model,
8x8 images, one step per block: the figures are not checked (a timing is never a test)."""

from __future__ import annotations

import json

import pytest
import torch

from wrn.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


TINY = ["wrn-10-1", "--input", "8", "--batch-size", "4", "--steps", "1", "--warmup", "1", "--repeats", "2",
        "--no-compile", "--peak-size", "128"]


def test_json_has_both_modes_and_every_figure(capsys):
    assert main(["bench", *TINY, "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["model"] == "wrn-10-1" and r["device"] == "cpu" and r["params"] > 0
    assert r["forward_gflop_per_image"] > 0
    assert set(r["matmul_peak_gflops"]) == {"bf16", "fp32"}
    assert {"cpu", "cpu_threads", "torch"} <= set(r["machine"])
    assert [m["mode"] for m in r["modes"]] == ["fast", "reference"]
    fast, ref = r["modes"]
    assert (fast["precision"], fast["channels_last"], fast["compile"]) == ("bf16", True, False)
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
    assert r["command"].startswith("wrn bench wrn-10-1 --batch-size 4") and "--no-compile" in r["command"]
    assert "keep_memory" in fast and "--no-keep-memory" not in r["command"]


def test_no_keep_memory_is_recorded_and_in_the_command(capsys):
    assert main(["bench", *TINY, "--no-reference", "--no-eval", "--no-keep-memory", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["modes"][0]["keep_memory"] is False and "--no-keep-memory" in r["command"]


def test_reference_runs_with_the_default_allocator_unless_asked(capsys):
    assert main(["bench", *TINY, "--no-eval", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["modes"][1]["keep_memory"] is False and "--reference-keep-memory" not in r["command"]
    assert main(["bench", *TINY, "--no-eval", "--reference-keep-memory", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["modes"][1]["keep_memory"] is r["modes"][0]["keep_memory"] and "--reference-keep-memory" in r["command"]


def test_table_without_reference(capsys):
    assert main(["bench", *TINY, "--no-reference", "--precision", "fp32", "--no-channels-last", "--no-eval"]) == 0
    out = capsys.readouterr().out
    assert "fast" in out and "train" in out and "reference" not in out.split("command:")[0]
    assert "command: wrn bench wrn-10-1" in out and "--no-reference" in out


@pytest.mark.parametrize("args, message", [
    (["wrn-10-1", "--steps", "0"], "--steps must be at least 1"),
    (["wrn-10-1", "--reference-keep-memory", "--no-keep-memory"], "process-wide"),
    (["wrn-9-1"], "depth 9"),
    pytest.param(["wrn-10-1", "--device", "cuda:0"], "no CUDA GPU",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")),
])
def test_bad_input_is_one_line_and_exit_2(capsys, args, message):
    assert main(["bench", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
