"""The augmentation policies (``wrn.data.policies``) beside kornia's, in one process: time per
batch, and what kornia does differently (one draw per batch, the global generator, its own
arithmetic). kornia is not a dependency: ``pip install kornia`` first.

    python benchmarks/policies_kornia.py [--batch-size 64] [--threads 1] [--repeats 40]

Both run on the CPU on random 32x32 images: ours on the uint8 NHWC batch as training feeds it,
kornia on the same batch as float NCHW in [0, 1] (its input). Calls alternate between the
implementations; the 20th percentile and the median of ``--repeats`` calls are printed (a shared
machine's load shows in the median).
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageOps

from wrn.data.policies import build_policy


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=40)
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    import kornia
    import kornia.augmentation.auto as auto

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    x8 = torch.from_numpy(rng.integers(0, 256, (args.batch_size, 32, 32, 3), dtype=np.uint8))
    xf = x8.permute(0, 3, 1, 2).float() / 255
    theirs = {"autoaugment": auto.AutoAugment("cifar10"), "randaugment": auto.RandAugment(n=2, m=9),
              "trivialaugment": auto.TrivialAugment()}
    g = torch.Generator().manual_seed(0)
    calls = {}
    for name, k in theirs.items():
        ours = build_policy(name)
        calls[f"{name} wrn"] = lambda o=ours: o(x8, g)
        calls[f"{name} kornia"] = lambda k=k: k(xf)
    times: dict[str, list[float]] = {key: [] for key in calls}
    for f in calls.values():
        f(), f(), f()
    for _ in range(args.repeats):
        for key, f in calls.items():
            t = time.perf_counter()
            f()
            times[key].append(time.perf_counter() - t)
    print(f"kornia {kornia.__version__}, torch {torch.__version__}, {args.threads} thread(s), "
          f"batch {args.batch_size} x 32x32 x 3, CPU")
    for key, ts in times.items():
        print(f"  {key:24s} p20 {1e3 * np.percentile(ts, 20):6.2f} ms   median {1e3 * np.median(ts):6.2f} ms")

    # Per image? What one call applied (its recorded parameters name the chosen sub-policy or
    # operations, one choice for the whole batch), and how many distinct images 64 copies of one
    # image became (magnitudes and probabilities may still vary per image).
    one = xf[:1].expand(64, -1, -1, -1).contiguous()
    for name, k in theirs.items():
        distinct = [len({bytes((o * 255).round().byte().numpy()) for o in k(one)}) for _ in range(5)]
        chosen = [item.name for item in k._params]
        print(f"  kornia {name}: the last call applied {chosen} to all 64 images; distinct outputs of 64 copies "
              f"of one image in 5 calls: {distinct}")

    # Pillow agreement of kornia's primitives (grey levels, 0..255).
    def pillow(fn):
        return np.stack([np.asarray(fn(Image.fromarray(i))) for i in x8.numpy()]).astype(int)

    def back(y):
        return (y.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy().astype(int)

    e = kornia.enhance
    checks = {"equalize": (lambda: e.equalize(xf), ImageOps.equalize),
              "posterize 3 bits": (lambda: e.posterize(xf, 3), lambda i: ImageOps.posterize(i, 3)),
              "solarize 128": (lambda: e.solarize(xf, 0.5), lambda i: ImageOps.solarize(i, 128)),
              "sharpness 1.7": (lambda: e.sharpness(xf, 1.7), lambda i: ImageEnhance.Sharpness(i).enhance(1.7)),
              "contrast 1.5": (lambda: e.adjust_contrast(xf, 1.5), lambda i: ImageEnhance.Contrast(i).enhance(1.5)),
              "saturation 0.3": (lambda: e.adjust_saturation(xf, 0.3), lambda i: ImageEnhance.Color(i).enhance(0.3))}
    for key, (kf, pf) in checks.items():
        d = np.abs(back(kf()) - pillow(pf))
        print(f"  kornia {key:18s} vs Pillow: max {d.max():3d} grey levels, {100 * (d > 0).mean():5.1f}% differ")


if __name__ == "__main__":
    main()
