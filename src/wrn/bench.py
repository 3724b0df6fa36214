"""Throughput, latency and memory of a model's training and evaluation steps, behind `wrn bench`.

Two modes are measured in the same process, on the same random CIFAR-shaped uint8 data, so every
speed-up is a ratio taken side by side:

- ``fast``: the project's own path, end to end: the images live on the device (DeviceLoader),
  augmentation is batched tensor ops (Augment), and the step comes from ``wrn.train.step`` with
  the config's ``accel.*`` settings. Its defaults are not declared here: they are the
  ``quick`` preset's (``FAST_PRESET``: precision auto, i.e. bf16 where the hardware has it
  natively and fp32 elsewhere; channels_last, compile, freed memory kept), i.e. the fast path as
  a user runs it, and ``key=value`` overrides change them through the config's own parser, as
  for ``wrn train``. Its training augmentation is crop + flip, plus the
  ``data.policy*``/``data.cutout`` overrides (``config.BENCH_KEYS``); the augmentation is also timed
  alone on one batch and reported as a share of the training step.
- ``reference``: the same architecture as a common public WRN training script runs it: fp32,
  eager, NCHW, a per-image ``torch.utils.data.Dataset`` (PIL pad + random crop + flip, to-tensor,
  normalise) batched by a DataLoader, the default SGD, and ``loss.item()`` every step.

Timing: warm-up steps first (their time is reported: for a compiled step it is the compile
warm-up), the device synchronized around every timed block, then ``repeats`` blocks of ``steps``
steps; figures are mean ± std over the blocks. GFLOP/s counts 3 x forward FLOPs per trained
image (forward + backward; 6 x with SAM's two passes, ``optim.sam_rho``) and 1 x per evaluated
image; "% of peak" divides by a bf16 (or fp32) matmul measured in the same run (``matmul_peak_gflops``: the largest n up to ``peak_size`` that
the time bound allows). A bf16 mode's peak is the faster of the bf16 and the fp32 matmul: where
bf16 is not native (an AVX2 CPU), oneDNN computes it in fp32, at best at the fp32 rate.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from typing import Any, Iterable, Iterator

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from wrn.data import ArrayDataset
from wrn.data.augment import Augment
from wrn.data.catalog import get as dataset_info
from wrn.data.loader import DeviceLoader
from wrn.data.policies import build_policy
from wrn.errors import UserError
from wrn.models import create_model
from wrn.models.flops import forward_flops
from wrn.timing import PEAK_SECONDS, figures, matmul_peak_gflops, peak_memory_mb, reset_peak_memory, time_loop
from wrn.train import accel, step
from wrn.train.config import BENCH_KEYS, Config, allowed, load_config, parse_override
from wrn.train.provenance import provenance
from wrn.train.validate import model_kwargs

# The fast mode's model.* and accel.* defaults: this preset's, so that `wrn bench MODEL` measures
# what `wrn train --preset quick model.name=MODEL` runs, and no second set of defaults exists.
FAST_PRESET = "quick"
CIFAR = dataset_info("cifar10")  # the random data is CIFAR-shaped and normalised with its statistics


def bench_config(model: str, overrides: Iterable[str] = ()) -> Config:
    """The fast mode's config: FAST_PRESET, ``model.name=model``, then ``model.*``/``accel.*`` and
    augmentation overrides (config.BENCH_KEYS), parsed and validated (precision included) by the
    config itself."""
    if any(parse_override(text)[0] == "model.name" for text in overrides):
        raise UserError("model.name: give the model as wrn bench's first argument, e.g. wrn bench wrn-16-4")
    return load_config(FAST_PRESET, overrides=[f"model.name={model}", *overrides], keys=BENCH_KEYS,
                       refuse=lambda key, _: (f"{key}: wrn bench takes only model.* and accel.* keys, and "
                                              "data.augment, data.cutout, data.policy*, optim.sam_rho, optim.sam_adaptive (the rest is "
                                              "wrn train's)"))


@dataclass
class BenchSettings:
    """What to measure: ``config`` (model.* and accel.*, from bench_config) and the bench's own knobs."""

    config: Config
    batch_size: int = 64
    steps: int = 10
    warmup: int = 3
    repeats: int = 3
    input_size: int = 32
    reference: bool = True
    reference_workers: int = 0  # DataLoader workers of the reference pipeline (2 cores: 0)
    eval: bool = True
    peak_size: int = 2048  # the largest n of the n x n matmul whose GFLOP/s is the "peak"
    # The reference runs first, with glibc's defaults as a plain script has them, unless
    # reference_keep_memory gives it the fast mode's accel.keep_memory setting too.
    reference_keep_memory: bool = False

    @property
    def model(self) -> str:
        return self.config.model.name

    @property
    def model_kwargs(self) -> dict[str, Any]:
        return model_kwargs(self.config)

    @property
    def num_classes(self) -> int:
        return self.model_kwargs["num_classes"]

    def record(self) -> dict[str, Any]:
        """The settings as the JSON records them: the bench's knobs, the model.*/accel.* sections."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "config"}
        data = {k: v for k, v in asdict(self.config.data).items() if allowed(BENCH_KEYS, f"data.{k}")}
        optim = {k: v for k, v in asdict(self.config.optim).items() if allowed(BENCH_KEYS, f"optim.{k}")}
        return {**out, **{s: asdict(getattr(self.config, s)) for s in ("model", "accel")}, "data": data, "optim": optim}

    def augmentation(self) -> str:
        """The fast mode's training augmentation in words, e.g. crop+flip+trivialaugment+cutout16."""
        d = self.config.data
        policy = {"none": "", "randaugment": f"+randaugment(N={d.policy_ops},M={d.policy_magnitude})"}.get(
            d.policy, f"+{d.policy}")
        return f"crop+flip{policy}{f'+cutout{d.cutout}' if d.cutout else ''}"


# -- data ------------------------------------------------------------------------------------------

def random_cifar(n: int, size: int, num_classes: int, seed: int = 0):
    """A random uint8 dataset of CIFAR's shape (the speed of a step does not depend on pixels)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    labels = rng.integers(0, num_classes, n).astype(np.int64)
    return ArrayDataset(images, labels, [str(c) for c in range(num_classes)])


def _forever(loader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    epoch = 0
    while True:
        yield from loader.epoch(epoch)
        epoch += 1


class PerImageDataset(torch.utils.data.Dataset):
    """What public CIFAR scripts do: one PIL image at a time, pad 4 + random crop, random flip,
    to a float tensor, normalise (torchvision's RandomCrop/RandomHorizontalFlip/ToTensor/Normalize,
    written with PIL and numpy because torchvision is not a dependency)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, train: bool, padding: int = 4):
        self.images, self.labels, self.train, self.padding = images, labels, train, padding
        self.mean = np.array(CIFAR.mean, dtype=np.float32)
        self.std = np.array(CIFAR.std, dtype=np.float32)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image, ImageOps

        img = Image.fromarray(np.asarray(self.images[i]))
        if self.train:
            p = self.padding
            img = ImageOps.expand(img, border=p, fill=0)
            dx, dy = np.random.randint(0, 2 * p + 1, 2)
            img = img.crop((dx, dy, dx + img.width - 2 * p, dy + img.height - 2 * p))
            if np.random.rand() < 0.5:
                img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        x = (np.asarray(img, dtype=np.float32) / 255.0 - self.mean) / self.std
        return torch.from_numpy(x.transpose(2, 0, 1).copy()), int(self.labels[i])


# -- the two modes -----------------------------------------------------------------------------------

def _build(s: BenchSettings, device: torch.device) -> nn.Module:
    torch.manual_seed(0)
    return create_model(s.model, **s.model_kwargs)


def _sgd(model: nn.Module) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)


def bench_fast(s: BenchSettings, device: torch.device, precision: str, flops: int, peak: float) -> dict:
    a, o = s.config.accel, s.config.optim
    kept_memory = a.keep_memory and accel.keep_freed_memory(device)  # process-wide from here on
    model = accel.prepare_model(_build(s, device), device, a.channels_last)
    optimizer = _sgd(model)
    train_step = step.make_train_step(model, optimizer, precision=precision, device=device, compile=a.compile,
                                 compile_mode=a.compile_mode, cuda_graphs=a.cuda_graphs,
                                 fused_optimizer=a.fused_optimizer, threads=a.threads, sam_rho=o.sam_rho,
                                 sam_adaptive=o.sam_adaptive)
    passes = 2 if o.sam_rho > 0 else 1  # SAM: two forward/backward passes per step
    ds = random_cifar(s.batch_size * 8, s.input_size, s.num_classes)
    loader = DeviceLoader(ds, s.batch_size, device=device, shuffle=True, drop_last=True, seed=0)
    # Augment returns the memory format the model was prepared with (NCHW or channels_last).
    d = s.config.data  # as training augments: reflect-pad crop and flip (data.augment), the policy, cutout
    augment = Augment(CIFAR.mean, CIFAR.std, crop_padding=4 if d.augment else 0, flip=d.augment, cutout=d.cutout,
                      channels_last=a.channels_last, policy=build_policy(d.policy, d.policy_ops, d.policy_magnitude))
    generator = torch.Generator(device=device)
    batches = _forever(loader)
    reset_peak_memory(device)

    def train_one():
        images, labels = next(batches)
        for group in optimizer.param_groups:  # the engine sets the schedule's lr every step
            group["lr"] = 0.01
        return train_step(augment(images, generator), labels)

    model.train()
    warm, blocks = time_loop(train_one, steps=s.steps, warmup=s.warmup, repeats=s.repeats, device=device)
    out = {"mode": "fast", "precision": precision, "compile": a.compile, "channels_last": a.channels_last,
           "threads": a.threads if a.threads == "auto" else torch.get_num_threads(),
           "keep_memory": kept_memory, "pipeline": "DeviceLoader + batched Augment on the device",
           "sam": ("asam" if o.sam_adaptive else "sam") if passes == 2 else None,
           "train": figures(blocks, s.steps, s.batch_size, 3 * passes * flops, peak), "train_warmup_s": warm}
    out["augment"] = _time_augment(s, augment, generator, next(batches)[0], device, out["train"]["ms_per_step"])
    if s.eval:
        eval_step = step.make_eval_step(model, precision=precision, device=device, compile=a.compile,
                                         compile_mode=a.compile_mode, cuda_graphs=a.cuda_graphs)
        model.eval()

        def eval_one():
            images, _ = next(batches)
            return eval_step(augment.normalize(images))

        warm, blocks = time_loop(eval_one, steps=s.steps, warmup=s.warmup, repeats=s.repeats, device=device)
        out["eval"] = figures(blocks, s.steps, s.batch_size, flops, peak)
        out["eval_warmup_s"] = warm
    out["peak_memory_mb"], out["memory_kind"] = peak_memory_mb(device)
    return out


def _time_augment(s: BenchSettings, augment, generator: torch.Generator, images: torch.Tensor,
                  device: torch.device, train_ms: float) -> dict:
    """The augmentation alone on one batch (uint8 in, model input out), timed like the step, and
    its share of the training step measured above (which includes it); with a policy or cutout,
    also the plain crop + flip, so that what they add is read off the same run."""
    def ms(aug) -> tuple[float, float]:
        _, blocks = time_loop(lambda: aug(images, generator), steps=s.steps, warmup=s.warmup, repeats=s.repeats,
                              device=device)
        f = figures(blocks, s.steps, s.batch_size, 0.0, 1.0)
        return f["ms_per_step"], f["ms_per_step_std"]

    mean, std = ms(augment)
    out = {"pipeline": s.augmentation(), "ms_per_step": mean, "ms_per_step_std": std,
           "share_of_train_step": mean / train_ms}
    if augment.policy is not None or augment.cutout:
        plain, _ = ms(Augment(augment.mean, augment.std, crop_padding=augment.crop_padding, flip=augment.flip,
                              channels_last=augment.channels_last))
        out.update(crop_flip_ms_per_step=plain, added_share_of_train_step=(mean - plain) / train_ms)
    return out


def bench_reference(s: BenchSettings, device: torch.device, flops: int, peak: float) -> dict:
    kept_memory = s.reference_keep_memory and s.config.accel.keep_memory and accel.keep_freed_memory(device)
    model = _build(s, device).to(device)
    optimizer = _sgd(model)  # torch's default SGD implementation for the device
    ds = random_cifar(s.batch_size * 8, s.input_size, s.num_classes)
    workers = s.reference_workers
    kwargs = dict(batch_size=s.batch_size, num_workers=workers, pin_memory=device.type == "cuda",
                  persistent_workers=workers > 0)
    train_loader = torch.utils.data.DataLoader(PerImageDataset(ds.images, ds.labels, True), shuffle=True,
                                               drop_last=True, **kwargs)
    test_loader = torch.utils.data.DataLoader(PerImageDataset(ds.images, ds.labels, False), shuffle=False,
                                              drop_last=True, **kwargs)

    def forever(loader):
        while True:
            yield from loader

    batches = forever(train_loader)
    reset_peak_memory(device)

    def train_one():
        x, y = next(batches)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()  # public scripts log the running loss every step

    model.train()
    warm, blocks = time_loop(train_one, steps=s.steps, warmup=s.warmup, repeats=s.repeats, device=device)
    out = {"mode": "reference", "precision": "fp32", "compile": False, "channels_last": False,
           "threads": torch.get_num_threads(), "keep_memory": kept_memory,
           "pipeline": f"per-image PIL Dataset + DataLoader (num_workers={workers})",
           "train": figures(blocks, s.steps, s.batch_size, 3 * flops, peak), "train_warmup_s": warm}
    if s.eval:
        eval_batches = forever(test_loader)
        model.eval()

        @torch.no_grad()
        def eval_one():
            x, _ = next(eval_batches)
            return model(x.to(device, non_blocking=True))

        warm, blocks = time_loop(eval_one, steps=s.steps, warmup=s.warmup, repeats=s.repeats, device=device)
        out["eval"] = figures(blocks, s.steps, s.batch_size, flops, peak)
        out["eval_warmup_s"] = warm
    out["peak_memory_mb"], out["memory_kind"] = peak_memory_mb(device)
    return out


def machine() -> dict:
    # Other jobs on a shared CPU slow every figure: the load says how quiet it was.
    return {**provenance(), "loadavg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}


def run_bench(s: BenchSettings) -> dict:
    """Measure the fast mode (and the reference mode unless ``s.reference`` is false)."""
    device = accel.resolve_device(s.config.accel.device)
    precision = accel.resolve_precision(s.config.accel.precision, device)  # "auto": from the device's ISA
    probe = _build(s, torch.device("cpu"))
    flops = forward_flops(probe, s.input_size)
    params = sum(p.numel() for p in probe.parameters())
    del probe
    seconds = PEAK_SECONDS / 10 if s.peak_size < 1024 else PEAK_SECONDS  # tests: a token measurement
    measured = {name: matmul_peak_gflops(device, dtype, s.peak_size, seconds)
                for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32))}
    peaks = {name: gflops for name, (gflops, _) in measured.items()}
    # Without native bf16 the bf16 mode runs (at best) at the fp32 rate: its peak is the faster one.
    fast_peak = max(peaks["bf16"], peaks["fp32"]) if precision == "bf16" else peaks["fp32"]
    result = {"model": s.model, "params": params, "forward_gflop_per_image": flops / 1e9,
              "device": str(device), "machine": machine(), "settings": s.record(),
              "matmul_peak_gflops": peaks, "matmul_peak_n": {name: n for name, (_, n) in measured.items()},
              "modes": []}
    # The reference first: the fast mode's process-wide allocator setting cannot be undone.
    ref = bench_reference(s, device, flops, peaks["fp32"]) if s.reference else None
    fast = bench_fast(s, device, precision, flops, fast_peak)
    result["modes"] = [fast] + ([ref] if ref else [])
    if ref:
        result["speedup"] = {k: fast[k]["img_per_s"] / ref[k]["img_per_s"] for k in ("train", "eval") if k in fast}
    return result


def format_result(r: dict) -> str:
    """A human table of run_bench's result."""
    m = r["machine"]
    bf16 = "native bf16" if m["native_bf16"] else "no native bf16"
    lines = [f"{r['model']}: {r['params'] / 1e6:.2f}M params, {r['forward_gflop_per_image']:.3f} GFLOP/image "
             f"forward | {r['device']}{' (' + m['gpu'] + ')' if 'gpu' in m and r['device'] != 'cpu' else ''} "
             f"| batch {r['settings']['batch_size']}",
             f"CPU: {m['cpu']}, {m['isa']} ({bf16}; torch kernels {m['torch_cpu_capability']}), "
             f"{m['cpu_threads']} threads, torch {m['torch']}, load {m.get('loadavg_1m') or 0:.1f}",
             "matmul peak: " + ", ".join(f"{k} {v:.1f} GFLOP/s ({r['matmul_peak_n'][k]}^2)"
                                          for k, v in r["matmul_peak_gflops"].items()),
             f"{'mode':<10} {'what':<6} {'img/s':>16} {'ms/step':>16} {'GFLOP/s':>8} {'% peak':>7} "
             f"{'warm-up s':>9} {'memory MB':>10}"]
    for mode in r["modes"]:
        for what in ("train", "eval"):
            if what not in mode:
                continue
            f = mode[what]
            lines.append(f"{mode['mode']:<10} {what:<6} {f['img_per_s']:>9.1f} ± {f['img_per_s_std']:<5.1f}"
                         f"{f['ms_per_step']:>9.1f} ± {f['ms_per_step_std']:<5.1f}{f['gflops']:>8.0f} "
                         f"{f['pct_of_peak']:>6.1f}% {mode[what + '_warmup_s']:>9.1f} "
                         f"{mode['peak_memory_mb']:>10.0f}")
        asked = r["settings"]["accel"]["precision"] if mode["mode"] == "fast" else mode["precision"]
        how = f" (accel.precision={asked})" if asked != mode["precision"] else ""
        sam = f", {mode['sam'].upper()} (two passes a step)" if mode.get("sam") else ""
        lines.append(f"{'':<10} {mode['precision']}{how}, compile={mode['compile']}, "
                     f"channels_last={mode['channels_last']}{sam}; {mode['pipeline']}")
        if "augment" in mode:
            a = mode["augment"]
            added = (f" (crop+flip alone {a['crop_flip_ms_per_step']:.2f} ms: the rest adds "
                     f"{100 * a['added_share_of_train_step']:.1f}%)" if "crop_flip_ms_per_step" in a else "")
            lines.append(f"{'':<10} augmentation {a['pipeline']}: {a['ms_per_step']:.2f} ± {a['ms_per_step_std']:.2f} "
                         f"ms/step, {100 * a['share_of_train_step']:.1f}% of the train step{added}")
    if "speedup" in r:
        lines.append("fast / reference: " + ", ".join(f"{k} {v:.2f}x" for k, v in r["speedup"].items()))
    return "\n".join(lines)
