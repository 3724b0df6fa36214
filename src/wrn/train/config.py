"""Training configuration: a dataclass tree, YAML recipes, dotted overrides, validation.

    cfg = load_config("paper-cifar", overrides=["train.epochs=10", "model.block=3,1,3"])

A config is built in three layers - the dataclass defaults (which are the paper's CIFAR recipe),
then a recipe (``--preset NAME`` from ``wrn/train/recipes/NAME.yaml`` or ``--config FILE``),
then ``key=value`` overrides - and checked as a whole before any work starts. Every problem is a
one-line ``UserError`` that names the key (and, for a misspelt key, the closest valid one).
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import yaml

from wrn.errors import UserError
from wrn.train.values import Seconds, coerce

RECIPES_DIR = Path(__file__).parent / "recipes"

# -- the keys each command may override (``apply_overrides``); "section." stands for a section ------
# `wrn train` takes every key. --resume: keys that change how a run executes or is stored, never
# what it computes; a sweep also keeps a run's label under them.
RUN_NEUTRAL_KEYS = ("accel.threads", "accel.keep_memory", "accel.dist_timeout", "data.cache_dir", "data.workers",
                    "log.", "train.checkpoint_every", "train.keep_every")
# A sweep's label ignores these speed switches too: they change the arithmetic's rounding, not the
# recipe (a resume may not change them: its weights must stay bit-identical).
SPEED_KEYS = ("accel.device", "accel.compile", "accel.compile_mode", "accel.channels_last", "accel.cuda_graphs",
              "accel.fused_optimizer", "accel.sync_bn", "train.eval_batch_size")
# ... and refuses these: they would change runs behind their labels (what to use instead).
SWEEP_FIXED_KEYS = {"train.epochs": "use --epochs", "optim.milestones": "use --epochs (milestones scale with it)",
                    "data.subset": "use --subset", "train.seed": "use --seeds", "data.name": "use --data / --dataset",
                    "data.path": "use --data", "model.": "the table fixes each run's model; use --model-scale to "
                    "shrink widths, or `wrn train` for a one-off net"}
# `wrn eval`: how the forward pass runs and where the data is cached, not what it computes.
EVAL_KEYS = ("accel.", "train.eval_batch_size", "data.cache_dir", "data.workers")
# `wrn predict`: how a trained checkpoint runs; the checkpoint fixes the model and its data.
INFERENCE_KEYS = ("accel.",)
# `wrn import`: what another codebase's checkpoint leaves open (the rest is a `wrn eval` override).
IMPORT_KEYS = ("model.name", "model.num_classes", "model.activation", "data.normalize", "data.mean", "data.std",
               "data.name", "accel.precision")
# `wrn bench`: the model, the speed switches and the augmentation the fast path times.
BENCH_KEYS = ("model.", "accel.", "data.augment", "data.cutout", "data.policy", "data.policy_ops",
              "data.policy_magnitude", "optim.sam_rho", "optim.sam_adaptive")


@dataclass
class ModelConfig:
    name: str = "wrn-28-10"
    dropout: float = 0.3
    # Kernel sizes of one residual block, e.g. (3, 3) = B(3,3); None = the model's own default.
    block: Optional[tuple[int, ...]] = None
    # None = N from the depth (docs/paper.md naming); set it for the deepening-factor table.
    blocks_per_group: Optional[int] = None
    num_classes: int = 0  # 0 = the number of classes in the data
    activation: Optional[str] = None  # dm-wrn: relu | silu; None = the model's own


@dataclass
class DataConfig:
    name: str = "cifar10"  # dataset name: downloaded into the cache when data.path is empty
    path: Optional[str] = None  # a local copy (archive, folder, image folder); wins over name
    # Images carved from train for tuning (seeded, stratified). 0 = train on the whole training set,
    # as the paper did (nothing is tuned; the final epoch's test accuracy is reported).
    val_size: int = 0
    subset: int = 0  # train on a seeded, stratified sample of K training images (0 = all)
    use_extra: bool = False  # SVHN: train + extra
    augment: bool = True  # random crop from a 4-pixel reflect pad + horizontal flip
    cutout: int = 0  # side of the cutout square in pixels (0 = off)
    # An automatic augmentation policy per image, after the crop + flip and before cutout
    # (wrn.data.policies): none | autoaugment (the CIFAR-10 policy) | randaugment | trivialaugment
    # (TrivialAugment-Wide).
    policy: str = "none"
    policy_ops: int = 2  # randaugment: N, the operations each image draws
    policy_magnitude: int = 9  # randaugment: M, the level of every operation (0..30)
    # dataset: mean/std of the training split; paper: the published CIFAR constants;
    # none: pixels / 255 (the paper's SVHN preprocessing); zca: contrast normalisation + ZCA
    # whitening fitted on the training split (wrn.data.zca; the paper's whitened CIFAR tables).
    normalize: str = "dataset"
    zca_epsilon: float = 0.1  # normalize=zca: added to the covariance's eigenvalues (the paper's 0.1)
    # Explicit per-channel constants on the [0, 1] scale (data.mean=R,G,B data.std=R,G,B): they
    # replace normalize=dataset|paper, e.g. to evaluate an imported net the way it was trained.
    mean: Optional[tuple[float, ...]] = None
    std: Optional[tuple[float, ...]] = None
    cache_dir: Optional[str] = None
    # Stream from disk through DataLoader workers instead of holding the data on the device
    # (ImageNet): random-resized crop + flip in the workers, centre crop for evaluation.
    streaming: bool = False
    image_size: int = 224  # streaming only: crop size
    workers: int = 4  # streaming only: DataLoader worker processes


@dataclass
class TrainConfig:
    epochs: int = 200
    batch_size: int = 128  # global (all processes together)
    eval_batch_size: int = 500
    # Test-time augmentation: every evaluation (val, test, final) averages the softmax of each
    # image and of its left-right mirror, as `wrn predict --tta`; twice the evaluation compute,
    # which a budget counts. The paper evaluated one view (its presets leave this off).
    eval_tta: bool = False
    seed: int = 0
    checkpoint_every: int = 0  # steps between mid-epoch checkpoints (0 = epoch ends only)
    keep_every: int = 0  # also keep the checkpoint of every N-th epoch (0 = only the last)
    skip_nonfinite: bool = False  # skip a batch whose loss/gradient is NaN/inf instead of stopping
    # Wall-clock budget in seconds (or 90s / 15m / 2h; --budget): after warm-up the run fixes
    # train.steps so that the whole schedule and the final evaluation end within it. 0 = none.
    time_budget: Seconds = 0.0
    # The fewest epochs a budget may give a WRN: when the configured one would get fewer (a slow
    # CPU), the run trains the widest narrower WRN of the same depth (width halved, down to 1)
    # that gets them, and writes its name into config.yaml beside train.steps. 0 = never.
    budget_min_epochs: float = 0.0
    # Total optimizer steps; 0 = train.epochs x steps per epoch. A budget writes its choice here
    # (so resume and replay never decide again); the schedule keeps its shape: milestones and
    # warm-up stay at the same fractions of training.
    steps: int = 0
    # Fine-tuning (--init DIR): start from the weights of a run or `wrn import` directory instead of
    # a fresh init; its architecture, a new classifier where the class count differs, and a fresh
    # optimizer, schedule and step (wrn.train.finetune).
    init: Optional[str] = None
    # The sha256 of the weights train.init gave: the run writes it into config.yaml when it takes
    # them, and a replay of that config.yaml refuses a DIR whose weights have changed since.
    init_sha256: Optional[str] = None
    # Which of train.init's weights to start from: ema (its moving average) or raw (its trained
    # weights); unset: the average where the source kept one, as eval and predict choose.
    init_weights: Optional[str] = None
    # Exponential moving average of the weights and BN buffers (wrn.train.step.make_ema): the
    # decay d of ema = d * ema + (1 - d) * weights after every step; 0 = off. Evaluation, the
    # summary, eval, predict and export use the averaged weights when a run has them.
    ema: float = 0.0


@dataclass
class OptimConfig:
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    wd_on_bn_bias: bool = True  # the paper decays every parameter, BN and biases included
    schedule: str = "step"  # step | cosine | onecycle (linear warmup then linear decay to 0)
    milestones: tuple[int, ...] = (60, 120, 160)  # epochs (schedule=step)
    gamma: float = 0.2  # lr factor at each milestone
    warmup_epochs: float = 0.0  # warm-up length (may be fractional, e.g. 400 steps = 400/390 epochs)
    # The warm-up's length in steps, fixed whatever train.steps; 0 = optim.warmup_epochs, stretched
    # with train.steps. A budgeted run sets it from warmup_epochs before its first step (and writes
    # it into config.yaml): it times its own warm-up to choose train.steps (wrn.train.pace).
    warmup_steps: int = 0
    # 0 = a linear warm-up from ~0 to optim.lr; > 0 = this constant lr during the warm-up, as He et
    # al.'s 0.01 for ResNet-110/1001 (they stop it when train error < 80%, ~400 steps; a fixed
    # length keeps a run a function of its config, so it is deterministic and resumable).
    warmup_lr: float = 0.0
    label_smoothing: float = 0.0
    # Scale lr linearly with train.batch_size / base_batch_size (Goyal et al. 2017); wd is kept.
    scale_with_batch: bool = False
    base_batch_size: int = 128
    # Sharpness-aware minimisation (Foret et al. 2021): the radius rho of the ascent step; 0 = off.
    # Two forward/backward passes a step (wrn.train.step).
    sam_rho: float = 0.0
    sam_adaptive: bool = False  # ASAM (Kwon et al. 2021): the ascent scaled by |w| element-wise


@dataclass
class AccelConfig:
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "fp32"  # fp32 | bf16 | auto (bf16 where the hardware has it natively, else fp32)
    compile: bool = False
    channels_last: bool = False
    # torchrun/DDP on CUDA: BatchNorm statistics over the global batch instead of each GPU's slice.
    sync_bn: bool = False
    compile_mode: str = "default"  # a torch.compile mode (accel.COMPILE_MODES)
    cuda_graphs: bool = True  # with compile on CUDA: replay the step as CUDA graphs
    fused_optimizer: bool = True  # fused SGD on CUDA, foreach on CPU (same arithmetic)
    # CPU threads: 0 = torch's default, N, or auto (re-picks the fastest count on a shared machine;
    # a count change may change rounding, so a bit-exact resume wants a fixed count).
    threads: str = "0"
    # CPU: keep freed memory in the heap for reuse rather than page-faulting it back in every
    # step (accel.keep_freed_memory; ~15% of a compiled step here). The process stays at its peak size.
    keep_memory: bool = True
    # torchrun: how long a collective waits for the other processes (seconds, or 90s / 5m) before
    # this one fails, naming the collective, instead of hanging for PyTorch's 30 minutes on a
    # process that stopped answering. Longer than any wait for one slow process (rank 0 writing a
    # checkpoint, a first compile, one process's data download).
    dist_timeout: Seconds = 300.0


@dataclass
class LogConfig:
    every_steps: int = 50  # a "step" line in log.jsonl every K steps
    test_every_epoch: bool = False  # test accuracy per epoch, for learning curves only
    quiet: bool = False  # no progress bar or epoch lines
    tensorboard: bool = False  # also write scalars and hparams for TensorBoard (the `tb` extra)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    accel: AccelConfig = field(default_factory=AccelConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain data (tuples as lists) for YAML/JSON."""
        return {s: {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(getattr(self, s)).items()}
                for s in _sections()}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def source(self) -> str:
        """What ``load_dataset`` reads: the local path when given, else the dataset name."""
        return self.data.path or self.data.name


def _sections() -> list[str]:
    return [f.name for f in dataclasses.fields(Config)]


def _section_types() -> dict[str, type]:
    return {f.name: typing.get_type_hints(Config)[f.name] for f in dataclasses.fields(Config)}


def valid_keys() -> list[str]:
    """Every dotted key, e.g. ``train.epochs``."""
    return [f"{s}.{f.name}" for s, cls in _section_types().items() for f in dataclasses.fields(cls)]


def list_presets() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def _unknown_key(key: str) -> UserError:
    tail = key.rsplit(".", 1)[-1]
    # A right key in the wrong section ("train.lr") first, then the closest spelling.
    close = [k for k in valid_keys() if k.rsplit(".", 1)[-1] == tail][:1]
    close = close or difflib.get_close_matches(key, valid_keys(), n=1, cutoff=0.5)
    hint = f"did you mean {close[0]!r}?" if close else "see the keys in `wrn train --help`"
    return UserError(f"unknown config key {key!r}: {hint}")


def _field_type(key: str):
    section, _, name = key.partition(".")
    types = _section_types()
    if section not in types or not name:
        raise _unknown_key(key)
    hints = typing.get_type_hints(types[section])
    if name not in hints:
        raise _unknown_key(key)
    return hints[name]


def set_value(cfg: Config, key: str, value: Any) -> None:
    """Set a dotted key from a YAML value or an override string, typed and checked."""
    tp = _field_type(key)
    section, _, name = key.partition(".")
    setattr(getattr(cfg, section), name, coerce(key, value, tp))


def _apply_mapping(cfg: Config, data: Any, origin: str) -> None:
    if data is None:
        return
    if not isinstance(data, dict):
        raise UserError(f"{origin}: expected a mapping of sections (model, data, train, ...), got {type(data).__name__}")
    for section, values in data.items():
        if section == "preset":
            continue
        if section not in _sections():
            close = difflib.get_close_matches(str(section), _sections(), n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"sections are {', '.join(_sections())}"
            raise UserError(f"{origin}: unknown config section {section!r}: {hint}")
        if values is None:
            continue
        if not isinstance(values, dict):
            raise UserError(f"{origin}: section {section!r} must be a mapping of key: value")
        for name, value in values.items():
            set_value(cfg, f"{section}.{name}", value)


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(f"config file {str(path)!r} does not exist: check the path") from None
    except IsADirectoryError:
        raise UserError(f"config file {str(path)!r} is a directory: give a .yaml file") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        first = str(e).splitlines()[0] if str(e) else "syntax error"
        raise UserError(f"config file {str(path)!r} is not valid YAML ({first}): fix the file") from None


def _preset_path(name: str) -> Path:
    path = RECIPES_DIR / f"{name}.yaml"
    if not path.is_file():
        close = difflib.get_close_matches(name, list_presets(), n=1, cutoff=0.4)
        hint = f"did you mean {close[0]!r}?" if close else f"presets: {', '.join(list_presets())}"
        raise UserError(f"unknown preset {name!r}: {hint}")
    return path


def parse_override(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key or "." not in key or any(c.isspace() for c in key):
        raise UserError(f"override {text!r} is not section.key=value: write it like train.epochs=10")
    return key, value


def allowed(keys: Iterable[str], key: str) -> bool:
    """Whether ``key`` is one of ``keys`` ("section." stands for every key of the section)."""
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in keys)


def apply_overrides(cfg: Config, overrides: Iterable[str], keys: Iterable[str] | None = None, *,
                    refuse: Callable[[str, Any], str] | None = None, unchanged_ok: bool = False) -> list[str]:
    """Set each ``key=value`` on ``cfg``, typed and checked (the whole config is validated by the
    caller, after everything is set); the keys set, in order. Every command takes its overrides
    through here. A key outside ``keys`` (None: every key) is a UserError saying
    ``refuse(key, current value)``, unless ``unchanged_ok`` and it leaves the value as it is (a
    resume may repeat the run's own settings)."""
    keys = None if keys is None else tuple(keys)
    done = []
    for text in overrides:
        key, value = parse_override(text)
        done.append(key)
        if keys is None or allowed(keys, key):
            set_value(cfg, key, value)
            continue
        _field_type(key)  # an unknown key says so, with the closest one
        section, _, name = key.partition(".")
        before = getattr(getattr(cfg, section), name)
        if unchanged_ok:
            set_value(cfg, key, value)
            if getattr(getattr(cfg, section), name) == before:
                continue
        raise UserError(refuse(key, before) if refuse else f"{key} may not be overridden here")
    return done


def load_config(preset: str | None = None, config_file: str | Path | None = None,
                overrides: Iterable[str] = (), keys: Iterable[str] | None = None,
                refuse: Callable[[str, Any], str] | None = None) -> Config:
    """Defaults <- preset or config file <- ``key=value`` overrides (only ``keys``, when given:
    see ``apply_overrides``), then validated.

    A config file may start from a preset with a top-level ``preset: NAME``.
    """
    if preset and config_file:
        raise UserError("give either a preset or a config file, not both")
    cfg = Config()
    if preset:
        _apply_mapping(cfg, _read_yaml(_preset_path(preset)), f"preset {preset!r}")
    if config_file:
        data = _read_yaml(Path(config_file))
        if isinstance(data, dict) and data.get("preset"):
            _apply_mapping(cfg, _read_yaml(_preset_path(str(data["preset"]))), f"preset {data['preset']!r}")
        _apply_mapping(cfg, data, f"config file {str(config_file)!r}")
    apply_overrides(cfg, overrides, keys, refuse=refuse)
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Every value in range, before any work (``wrn.train.validate``); a one-line UserError naming the key."""
    # Imported here: validation builds the model on the meta device, and reading the keys and
    # presets alone (`wrn train --help`) must not import torch.
    from wrn.train import validate as checks

    checks.validate(cfg)


def config_from_dict(data: dict) -> Config:
    """Rebuild a saved (resolved) config, e.g. from a checkpoint's state.json."""
    cfg = Config()
    _apply_mapping(cfg, data, "saved config")
    return cfg

