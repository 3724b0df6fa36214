"""`wrn import`: checkpoints in each foreign layout (built here, tiny) become run directories that
`wrn predict` / `wrn eval` / `wrn export` / `wrn runs` take, with the reference's outputs on
pixels prepared the reference's way; bad inputs fail in one line and write nothing."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

import wrn
from helpers import write_image_folder  # tests/helpers.py
from reference_nets import (dm_forward, dm_state, ssl_forward, ssl_state, xternalz_forward,  # tests/reference_nets.py
                            xternalz_state)
from wrn.cli import main
from wrn.commands import import_ as import_command
from wrn.models import layouts

pytestmark = pytest.mark.usefixtures("one_thread")

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
TORCHSSL_C10 = (tuple(x / 255 for x in (125.3, 123.0, 113.9)), tuple(x / 255 for x in (63.0, 62.1, 66.7)))


def pixels(n=6, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def as_input(images, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)):
    """The references' own preparation: ToTensor (/255) then Normalize(mean, std)."""
    x = torch.tensor(images).permute(0, 3, 1, 2).float() / 255
    return (x - torch.tensor(mean).view(-1, 1, 1)) / torch.tensor(std).view(-1, 1, 1)


def reference_probs(forward, images, **prep):
    with torch.no_grad():
        return torch.softmax(forward(as_input(images, **prep)), 1).numpy()


# (layout, checkpoint as saved by its codebase, the reference's probabilities, overrides)
def case(layout):
    if layout == "dm":
        sd = dm_state(10, 1, 10)
        return {"state_dict": {"module." + k: v for k, v in sd.items()}}, \
            lambda x: dm_forward(dm_state(10, 1, 10), x, 10, 1, act=F.silu), {}, ["model.activation=silu"]
    if layout == "xternalz":  # RobustBench's TRADES WRN: no classifier bias, an unused sub_block1
        sd = xternalz_state(10, 2, 10, fc_bias=False)
        extra = {"sub_block1." + k[len("block1."):]: v.clone() for k, v in sd.items() if k.startswith("block1.")}
        return {**sd, **extra}, lambda x: xternalz_forward(xternalz_state(10, 2, 10, fc_bias=False), x, 10, 2), {}, []
    codebase = {"ssl": "usb", "ssl-torchssl": "torchssl", "ssl-usb-early": "usb-early"}[layout]
    ema, raw = ssl_state(10, 2, 10, codebase, seed=3), ssl_state(10, 2, 10, codebase, seed=4)
    mean, std = TORCHSSL_C10 if codebase == "torchssl" else IMAGENET
    return {"model": raw, "ema_model": ema, "it": 7}, \
        lambda x: ssl_forward(ssl_state(10, 2, 10, codebase, seed=3), x, 10, 2, codebase), \
        {"mean": mean, "std": std}, []


@pytest.mark.parametrize("layout", ["dm", "xternalz", "ssl", "ssl-torchssl", "ssl-usb-early"])
def test_import_then_predict_gives_the_references_probabilities(tmp_path, layout, capsys):
    ckpt, forward, prep, overrides = case(layout)
    torch.save(ckpt, tmp_path / "ref.pt")
    out = tmp_path / "runs" / layout
    assert main(["import", str(tmp_path / "ref.pt"), "--layout", layout, "--out", str(out), *overrides]) == 0
    said = capsys.readouterr().out
    images = pixels()
    preds = wrn.predict(out, images, device="cpu")
    np.testing.assert_allclose(preds.probs, reference_probs(forward, images, **prep), atol=2e-5, rtol=1e-4)
    assert preds.classes[3] == "cat"  # CIFAR-10's names for a 10-class net (said in the log)
    assert "cifar10's" in said
    if layout.startswith("ssl"):
        assert "took the weights under 'ema_model'" in said  # USB evaluates the EMA weights
    if layout == "xternalz":
        assert "sub_block1" in said and "bias_last" in said
    # The same through the command line, from an image file.
    Image.fromarray(images[0]).save(tmp_path / "cat.png")
    assert main(["predict", str(out), str(tmp_path / "cat.png"), "--out", str(tmp_path / "p.json"), "accel.device=cpu"]) == 0
    top = json.loads((tmp_path / "p.json").read_text())["predictions"][0]["top"][0]
    assert top["prob"] == pytest.approx(float(preds.probs[0].max()), abs=1e-5)


def test_state_key_takes_the_other_weights(tmp_path):
    ckpt, _, prep, _ = case("ssl")
    torch.save(ckpt, tmp_path / "usb.pth")
    wrn.import_checkpoint(tmp_path / "usb.pth", tmp_path / "raw", layout="ssl", state_key="model", log=None)
    images = pixels()
    probs = wrn.predict(tmp_path / "raw", images, device="cpu").probs
    want = reference_probs(lambda x: ssl_forward(ssl_state(10, 2, 10, "usb", seed=4), x, 10, 2), images, **prep)
    np.testing.assert_allclose(probs, want, atol=2e-5, rtol=1e-4)


def test_imported_run_evaluates_exports_lists_and_refuses_resume(tmp_path, capsys):
    data = write_image_folder(tmp_path / "data", 4, 12, 32, classes=4)
    names = ",".join(f"class{c}" for c in range(4))
    sd = dm_state(10, 1, 4)
    save_file(sd, tmp_path / "dm.safetensors")
    out = tmp_path / "runs" / "dm"
    assert main(["import", str(tmp_path / "dm.safetensors"), "--layout", "dm", "--out", str(out),
                 "--classes", names]) == 0
    capsys.readouterr()
    assert main(["eval", str(out), "--data", str(data), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["precision"] == "fp32" and result["model"] == "dm-wrn-10-1"
    # The reference on the same files: [0, 1] pixels, its normalisation inside.
    files = sorted((data / "test").rglob("*.png"))
    images = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    labels = np.array([int(f.parent.name[len("class"):]) for f in files])
    want = reference_probs(lambda x: dm_forward(dm_state(10, 1, 4), x, 10, 1), images).argmax(1)
    assert result["accuracy"] == pytest.approx(float((want == labels).mean()))
    assert result["images"] == len(files)

    model, state = wrn.load_checkpoint(out)
    assert state["imported"]["layout"] == "dm" and state["normalize"] == {"mean": [0.0] * 3, "std": [1.0] * 3}
    assert main(["export", str(out), "--onnx", str(tmp_path / "dm.onnx")]) == 0
    capsys.readouterr()

    assert main(["runs", str(tmp_path / "runs")]) == 0
    assert "imported from" in capsys.readouterr().out
    for argv in (["train", "--resume", str(out)], ["train", "--out", str(out)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "imported checkpoint" in err and "--init" in err


def test_bf16_evaluation_is_an_override(tmp_path, capsys):
    data = write_image_folder(tmp_path / "data", 4, 4, 32, classes=4)
    torch.save(ssl_state(10, 1, 4), tmp_path / "usb.pt")
    out = tmp_path / "usb"
    wrn.import_checkpoint(tmp_path / "usb.pt", out, layout="ssl", classes=[f"class{c}" for c in range(4)], log=None)
    assert main(["eval", str(out), "--data", str(data), "--json", "accel.precision=bf16", "accel.device=cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["precision"] == "bf16"


def test_wrn_and_torchvision_layouts_round_trip(tmp_path):
    torch.manual_seed(0)
    ours = wrn.create_model("wrn-10-2", num_classes=5).eval()
    torch.save(ours.state_dict(), tmp_path / "wrn.pt")
    wrn.import_checkpoint(tmp_path / "wrn.pt", tmp_path / "w", layout="wrn", log=None)
    back, _ = wrn.load_checkpoint(tmp_path / "w")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(back(x), ours(x))
    with torch.device("meta"):  # torchvision's key layout is models/imagenet.py's own
        tv = wrn.create_model("resnet50", num_classes=3)
    keys = list(tv.state_dict())
    assert layouts.detect(keys) == "torchvision" and layouts.to_ours("torchvision", dict.fromkeys(keys))[0].keys() == set(keys)
    assert layouts.infer("torchvision", tv.state_dict()) == ("resnet50", {"num_classes": 3})


def test_key_maps_invert():
    for layout, state in [("dm", dm_state(16, 1, 3)), ("xternalz", xternalz_state(16, 2, 3)),
                          ("ssl", ssl_state(10, 2, 3)), ("ssl-torchssl", ssl_state(10, 1, 3, "torchssl"))]:
        ours, _, unmapped = layouts.to_ours(layout, state)
        assert not unmapped and layouts.from_ours(layout, ours).keys() == state.keys()
        assert layouts.detect(list(state)) == layout


def test_the_command_lists_the_layouts_without_importing_torch():
    assert import_command.LAYOUTS == layouts.LAYOUTS


# -- bad input: one line, exit 2, nothing written -------------------------------------------------

class NotAWeight:
    pass


def bad_cases(tmp_path):
    (tmp_path / "notes.pt").write_text("not a checkpoint\n")
    (tmp_path / "broken.safetensors").write_bytes(b"\x00" * 40)
    torch.save({"state_dict": dm_state(10, 1, 10), "args": NotAWeight()}, tmp_path / "code.pt")
    torch.save(dm_state(10, 1, 10), tmp_path / "dm.pt")
    torch.save(ssl_state(10, 1, 10, "torchssl"), tmp_path / "torchssl.pt")
    (tmp_path / "taken").mkdir()
    return [
        (["notes.pt", "--layout", "dm"], "notes.pt is not a checkpoint"),
        (["broken.safetensors", "--layout", "dm"], "not a readable safetensors file"),
        (["code.pt", "--layout", "dm"], "needs more than tensors to load"),
        (["dm.pt", "--layout", "xternalz"], "keys look like --layout dm; missing 'conv1.weight'"),
        (["dm.pt", "--layout", "ssl"], "unexpected 'init_conv.weight'"),
        (["torchssl.pt", "--layout", "ssl"], "--layout ssl-torchssl (TorchSSL) or --layout ssl-usb-early"),
        (["dm.pt", "--layout", "dm", "--classes", "cifar100"], "--classes gives 100 classes but the classifier has 10"),
        (["dm.pt", "--layout", "dm", "model.num_classes=100"], "'fc.weight' is [10, 64] in the checkpoint but"),
        (["dm.pt", "--layout", "dm", "model.name=dm-wrn-16-1"], "the keys are dm's but not this model's"),
        (["dm.pt", "--layout", "dm", "data.mean=0.5,0.5,0.5", "data.std=0.2,0.2,0.2"], "normalises its inputs inside"),
        (["dm.pt", "--layout", "dm", "model.activation=gelu"], "relu, silu"),
        (["dm.pt", "--layout", "dm", "train.epochs=3"], "train.epochs does not apply to an import"),
        (["missing.pt", "--layout", "dm"], "no such file"),
    ]


def test_bad_inputs_fail_in_one_line_and_write_nothing(tmp_path, capsys):
    for args, message in bad_cases(tmp_path):
        before = sorted(p.name for p in tmp_path.iterdir())
        out = tmp_path / "new"
        argv = ["import", str(tmp_path / args[0]), *args[1:], "--out", str(out)]
        assert main(argv) == 2, args
        err = capsys.readouterr().err
        assert message in err, (args, err)
        assert err.count("\n") == 1 and err.startswith("wrn: error: "), err
        assert sorted(p.name for p in tmp_path.iterdir()) == before, f"{args} left files behind"


def test_an_existing_directory_is_never_overwritten(tmp_path, capsys):
    torch.save(dm_state(10, 1, 10), tmp_path / "dm.pt")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    assert main(["import", str(tmp_path / "dm.pt"), "--layout", "dm", "--out", str(tmp_path / "taken")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["keep.txt"]


def test_torchvision_layout_imports_with_imagenets_convention(tmp_path):
    from wrn.models.imagenet import load_external_weights
    from wrn.data.streaming import eval_transform

    torch.manual_seed(0)
    ref = wrn.create_model("resnet50", num_classes=3).eval()
    torch.save({"model": ref.state_dict()}, tmp_path / "tv.pth")
    wrn.import_checkpoint(tmp_path / "tv.pth", tmp_path / "tv", layout="torchvision", classes="a,b,c", log=None)
    image = Image.fromarray(pixels(1)[0]).resize((300, 260))
    probs = wrn.predict(tmp_path / "tv", [image], device="cpu").probs
    # torchvision's way: resize the short side to 256, centre-crop 224, ToTensor, ImageNet Normalize.
    x = as_input(eval_transform(image, 224)[None], *IMAGENET)
    same = load_external_weights(wrn.create_model("resnet50", num_classes=3), tmp_path / "tv.pth").eval()
    np.testing.assert_allclose(probs, torch.softmax(same(x), 1).detach().numpy(), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("overrides, message", [
    (["data.mean=0.5,0.5,0.5"], "data.std: is missing"),
    (["data.mean=0.5,0.5", "data.std=0.2,0.2"], "must be 3 numbers"),
    (["data.mean=0.5,0.5,0.5", "data.std=0.2,0,0.2"], "must be positive"),
    (["data.mean=0.5,0.5,0.5", "data.std=0.2,0.2,0.2", "data.normalize=zca"], "drop one of them"),
    (["model.name=wrn-16-4", "model.activation=silu"], "model.activation: wrn-16-4 has no argument 'activation'"),
    (["model.name=dm-wrn-16-1", "model.dropout=0", "data.mean=0.5,0.5,0.5", "data.std=0.2,0.2,0.2"],
     "data.mean: dm-wrn-16-1 normalises its inputs inside the model"),
])
def test_new_config_keys_are_checked(overrides, message):
    from wrn.errors import UserError
    from wrn.train.config import load_config

    with pytest.raises(UserError, match=message):
        load_config(overrides=overrides)


def test_explicit_constants_normalise_training_data():
    from wrn.train.config import load_config
    from wrn.train.data import _normalization

    cfg = load_config(overrides=["data.mean=0.485,0.456,0.406", "data.std=0.229,0.224,0.225"])
    assert _normalization(cfg, None) == ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    cfg = load_config(overrides=["model.name=dm-wrn-16-1", "model.activation=silu", "model.dropout=0"])
    assert cfg.model.activation == "silu"


def test_a_failed_write_leaves_neither_the_run_nor_the_parents_it_made(tmp_path, monkeypatch, capsys):
    from wrn.train import checkpoint

    torch.save(dm_state(10, 1, 10), tmp_path / "dm.pt")

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint, "save_checkpoint", full_disk)
    assert main(["import", str(tmp_path / "dm.pt"), "--layout", "dm", "--out", str(tmp_path / "a" / "b" / "run")]) == 2
    assert "No space left" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dm.pt"]
