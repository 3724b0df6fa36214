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
