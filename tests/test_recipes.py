"""The recipes the paper's tables train with: the thin baselines' own (He et al. 2016a/b), its
constant-lr warm-up, and the WRN recipes' dropout as the dropout table's rate."""

import pytest

from wrn.errors import UserError
from wrn.experiments import paper, sweep
from wrn.train.config import load_config
from wrn.train.optim import Schedule, scaled

STEPS_PER_EPOCH = 50_000 // 128  # 390 with drop_last


@pytest.mark.parametrize("preset, warmup_epochs, warmup_lr", [
    ("resnet-cifar", 0.0, 0.0), ("resnet-cifar-warmup", 400 / STEPS_PER_EPOCH, 0.01)])
def test_baseline_presets_are_he_et_al_recipes(preset, warmup_epochs, warmup_lr):
    cfg = load_config(preset)
    o = cfg.optim
    assert (cfg.train.batch_size, o.lr, o.momentum, o.nesterov, o.weight_decay) == (128, 0.1, 0.9, False, 1e-4)
    assert (o.schedule, o.milestones, o.gamma) == ("step", (82, 123), 0.1)
    # 32k / 48k / 64k iterations at 390 steps per epoch.
    assert [round(k / STEPS_PER_EPOCH) for k in (32_000, 48_000, 64_000)] == [*o.milestones, cfg.train.epochs]
    assert round(o.warmup_epochs * STEPS_PER_EPOCH) == round(warmup_epochs * STEPS_PER_EPOCH)
    assert o.warmup_lr == warmup_lr
    assert cfg.data.val_size == 0 and cfg.model.dropout == 0.0


def schedule(preset, **kwargs):
    cfg = load_config(preset)
    return Schedule(cfg.optim, scaled(cfg.optim, 128, cfg.train.epochs), STEPS_PER_EPOCH, cfg.train.epochs, **kwargs)


def test_warmup_holds_lr_0_01_for_400_steps_then_0_1_and_drops_tenfold_at_32k_and_48k():
    lr = schedule("resnet-cifar-warmup")
    assert {lr(s) for s in range(400)} == {0.01}
    assert lr(400) == 0.1 and lr(82 * 390 - 1) == 0.1
    assert lr(82 * 390) == pytest.approx(0.01) and lr(123 * 390 - 1) == pytest.approx(0.01)
    assert lr(123 * 390) == pytest.approx(0.001) and lr(164 * 390 - 1) == pytest.approx(0.001)
    # Controls: without the warm-up the run starts at 0.1; warmup_lr 0 keeps the linear ramp.
    assert schedule("resnet-cifar")(0) == 0.1
    ramp = load_config("resnet-cifar-warmup", overrides=["optim.warmup_lr=0"]).optim
    ramp_lr = Schedule(ramp, scaled(ramp, 128, 164), STEPS_PER_EPOCH, 164)
    assert ramp_lr(0) == pytest.approx(0.1 / 400) and ramp_lr(399) == pytest.approx(0.1)


def test_warmup_lr_scales_with_the_batch_and_is_validated():
    cfg = load_config("resnet-cifar-warmup", overrides=["optim.scale_with_batch=true", "train.batch_size=256"])
    hyper = scaled(cfg.optim, 256, 164)
    assert (hyper.lr, hyper.warmup_lr) == (pytest.approx(0.2), pytest.approx(0.02))
    with pytest.raises(UserError, match="optim.warmup_lr: -0.01 must be >= 0"):
        load_config("resnet-cifar", overrides=["optim.warmup_lr=-0.01"])
    with pytest.raises(UserError, match="optim.warmup_lr: 0.01 needs optim.warmup_epochs > 0"):
        load_config("resnet-cifar", overrides=["optim.warmup_lr=0.01"])


def test_thin_vs_wide_trains_the_baselines_with_their_own_recipes(tmp_path):
    planned = sweep.plan(paper.get_table("thin-vs-wide"), out=tmp_path, count=False)
    presets = {(p.model, p.run.dataset): p.preset for p in planned}
    for dataset in ("cifar10", "cifar100"):
        assert presets[("resnet-110", dataset)] == "resnet-cifar-warmup"
        assert presets[("preact-resnet-164", dataset)] == "resnet-cifar"
        assert presets[("preact-resnet-1001", dataset)] == "resnet-cifar-warmup"
        assert presets[("wrn-28-10", dataset)] == "paper-cifar"  # control: the WRNs keep the paper's
    thin, wide = (load_config(p.preset, overrides=p.overrides) for p in planned
                  if p.run.dataset == "cifar100" and p.model in ("resnet-110", "wrn-16-8"))
    assert (thin.optim.nesterov, thin.optim.weight_decay, thin.train.epochs, thin.optim.warmup_lr) == (False, 1e-4, 164, 0.01)
    assert (wide.optim.nesterov, wide.optim.weight_decay, wide.train.epochs, wide.optim.warmup_lr) == (True, 5e-4, 200, 0)
    assert thin.model.name == "resnet-110" and thin.data.name == "cifar100"


def test_the_dropout_table_takes_its_rate_from_the_recipes(monkeypatch):
    rates = {r.dataset: r.model_kwargs["dropout"] for r in paper.get_table("dropout").runs if "dropout" in r.model_kwargs}
    assert rates == {d: load_config(paper.RECIPE[d]).model.dropout for d in rates} == \
        {"cifar10": 0.3, "cifar100": 0.3, "svhn": 0.4}
    # Control: a recipe with another rate changes the table.
    real = paper.load_config
    monkeypatch.setattr(paper, "load_config", lambda preset: real(preset, overrides=["model.dropout=0.25"]))
    paper.recipe_dropout.cache_clear()
    try:
        assert {r.model_kwargs.get("dropout") for r in paper.get_table("dropout").runs} == {None, 0.25}
    finally:
        paper.recipe_dropout.cache_clear()


# The published recipes of the papers that took WRN-28-10 past the paper's numbers (docs/recipes.md):
# dropout, cutout, policy, schedule, milestones, gamma, epochs, batch, lr, wd, nesterov, sam_rho.
PUBLISHED = {
    # DeVries & Taylor 2017 (uoguelph-mlrg/Cutout): the WRN recipe + cutout 16 (CIFAR-10).
    "cutout-cifar": (0.3, 16, "none", "step", (60, 120, 160), 0.2, 200, 128, 0.1, 5e-4, True, 0.0),
    # Cubuk et al. 2019: AutoAugment + cutout 16, cosine, no dropout.
    "autoaugment-cifar": (0.0, 16, "autoaugment", "cosine", None, None, 200, 128, 0.1, 5e-4, True, 0.0),
    # Mueller & Hutter 2021 (automl/trivialaugment confs): TrivialAugment-Wide + cutout 16, cosine.
    "trivialaugment-cifar": (0.0, 16, "trivialaugment", "cosine", None, None, 200, 128, 0.1, 5e-4, True, 0.0),
    # Foret et al. 2021 (google-research/sam): rho 0.05, batch 256, cosine, basic augmentation.
    "sam-cifar": (0.0, 0, "none", "cosine", None, None, 200, 256, 0.1, 5e-4, True, 0.05),
}


@pytest.mark.parametrize("preset", sorted(PUBLISHED))
def test_published_wrn_presets_hold_their_papers_values(preset):
    cfg = load_config(preset)
    d, o, t = cfg.data, cfg.optim, cfg.train
    dropout, cutout, policy, sched, milestones, gamma, epochs, batch, lr, wd, nesterov, rho = PUBLISHED[preset]
    assert (cfg.model.name, cfg.model.dropout, d.cutout, d.policy, d.augment) == ("wrn-28-10", dropout, cutout, policy, True)
    assert (o.schedule, t.epochs, t.batch_size, o.lr, o.weight_decay, o.nesterov, o.momentum) == \
        (sched, epochs, batch, lr, wd, nesterov, 0.9)
    if milestones is not None:
        assert (o.milestones, o.gamma) == (milestones, gamma)
    assert (o.sam_rho, o.sam_adaptive, o.warmup_epochs, o.label_smoothing, t.ema) == (rho, False, 0.0, 0.0, 0.0)
    # Like the paper presets: the whole training set, nothing tuned; every parameter decayed.
    assert (d.name, d.val_size, d.subset, o.wd_on_bn_bias, o.scale_with_batch) == ("cifar10", 0, 0, True, False)


def test_cutout_preset_takes_the_cifar100_square_as_an_override():
    cfg = load_config("cutout-cifar", overrides=["data.name=cifar100", "data.cutout=8"])
    assert (cfg.data.name, cfg.data.cutout, cfg.model.dropout) == ("cifar100", 8, 0.3)
    assert load_config("cutout-cifar", overrides=["data.name=cifar100"]).data.cutout == 16  # control: explicit


def test_sam_and_ema_keys_are_validated():
    with pytest.raises(UserError, match=r"optim.sam_rho: -0.1 must be >= 0"):
        load_config("sam-cifar", overrides=["optim.sam_rho=-0.1"])
    with pytest.raises(UserError, match=r"optim.sam_adaptive: needs optim.sam_rho > 0"):
        load_config("paper-cifar", overrides=["optim.sam_adaptive=true"])
    with pytest.raises(UserError, match=r"train.ema: 1.0 is out of range"):
        load_config("paper-cifar", overrides=["train.ema=1"])
    cfg = load_config("sam-cifar", overrides=["optim.sam_adaptive=true", "optim.sam_rho=1.0", "train.ema=0.999"])
    assert (cfg.optim.sam_adaptive, cfg.optim.sam_rho, cfg.train.ema) == (True, 1.0, 0.999)
