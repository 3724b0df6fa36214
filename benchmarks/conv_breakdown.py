"""Where a WRN training step's convolution time goes: forward, backward-data and
backward-weights of every convolution, timed one at a time with the step's own shapes (bf16,
channels_last, oneDNN), with TFLOP/s. Shows which kernels hold the CPU fast path back.

The last column is a lead, not a feature: the weight gradient of a stride-1 3x3 conv computed
on "tiled" images (pairs of images side by side, 2 zero columns between them, so the conv's
zero padding still separates them: the same gradient) - oneDNN runs that layout much faster at
8x8. Its time includes tiling both tensors (eager copies).

    flock /tmp/wrn-cpu.lock python benchmarks/conv_breakdown.py [--model wrn-16-4] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn as nn

from wrn.models import create_model


def timed_ms(fn, repeats: int = 15) -> float:
    for _ in range(3):
        fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1e3


def tiled(x: torch.Tensor, t: int = 2) -> torch.Tensor:
    """[N, C, H, W] -> [N/t, C, H, t(W+2)]: t images side by side with 2 zero columns after each."""
    n, c, h, w = x.shape
    rows = torch.nn.functional.pad(x.permute(0, 2, 3, 1), (0, 0, 0, 2))  # N, H, W+2, C
    rows = rows.reshape(n // t, t, h, w + 2, c).transpose(1, 2).reshape(n // t, h, t * (w + 2), c)
    return rows.permute(0, 3, 1, 2)  # a channels_last view


def conv_shapes(model: nn.Module, batch: int, size: int) -> list[tuple]:
    """(input shape, conv) for every Conv2d, from one forward pass."""
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append((tuple(i[0].shape), m)))
             for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model(torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last))
    for h in hooks:
        h.remove()
    return seen


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="wrn-16-4")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--input", type=int, default=32)
    a = p.parse_args()
    model = create_model(a.model, num_classes=10).to(memory_format=torch.channels_last)
    backward = torch.ops.aten.convolution_backward
    totals = [0.0, 0.0, 0.0]
    print("| input | weight | stride | forward ms (TFLOP/s) | backward-data ms | backward-weights ms "
          "| backward-weights on tiled images, incl. tiling, ms |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for shape, conv in conv_shapes(model, a.batch_size, a.input):
        cl = torch.channels_last
        x = torch.randn(shape).bfloat16().contiguous(memory_format=cl)
        w = conv.weight.detach().bfloat16().contiguous(memory_format=cl)
        out = torch.nn.functional.conv2d(x, w, None, conv.stride, conv.padding)
        g = torch.randn_like(out).contiguous(memory_format=cl)
        args = (None, list(conv.stride), list(conv.padding), [1, 1], False, [0, 0], 1)
        tflop = 2 * out.numel() * w[0].numel() / 1e12
        ms = [timed_ms(lambda: torch.nn.functional.conv2d(x, w, None, conv.stride, conv.padding)),
              timed_ms(lambda: backward(g, x, w, *args, [True, False, False])) if shape[1] > 3 else 0.0,
              timed_ms(lambda: backward(g, x, w, *args, [False, True, False]))]
        totals = [t + m for t, m in zip(totals, ms)]
        cells = " | ".join(f"{m:.2f} ({tflop / m * 1e3:.2f})" if m else "- (input needs no grad)" for m in ms)
        tiled_cell = "-"
        if conv.kernel_size == (3, 3) and conv.stride == (1, 1) and shape[0] % 2 == 0:
            xt, gt = tiled(x), tiled(g)
            exact = torch.allclose(backward(gt, xt, w, *args, [False, True, False])[1].float(),
                                   backward(g, x, w, *args, [False, True, False])[1].float(), rtol=0.02, atol=0.5)
            ms_t = timed_ms(lambda: backward(tiled(g), tiled(x), w, *args, [False, True, False]))
            tiled_cell = f"{ms_t:.2f} ({tflop / ms_t * 1e3:.2f}){'' if exact else ' MISMATCH'}"
        print(f"| {list(shape)} | {list(w.shape)} | {conv.stride[0]} | {cells} | {tiled_cell} |")
    print(f"| total | | | {totals[0]:.1f} | {totals[1]:.1f} | {totals[2]:.1f} | |")


if __name__ == "__main__":
    main()
