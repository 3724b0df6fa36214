"""ImageNet nets: torchvision's state-dict layout exactly, strict loading of external weights
(.pth with weights_only, .safetensors), the same outputs as torchvision's forward, clear errors."""

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from wrn import create_model
from wrn.errors import UserError
from wrn.models.imagenet import ImageNetResNet, load_external_weights

# torchvision.models.resnet (documented architecture, written out here; torchvision is not imported):
# Bottleneck(conv1 1x1 -> width, conv2 3x3 stride s, conv3 1x1 -> 4 * planes), width = planes * base_width / 64,
# downsample = Sequential(conv1x1 stride s, BN) on the first block of each layer; fc = Linear(2048, classes).
TORCHVISION = {
    "resnet50": ((3, 4, 6, 3), 64, 25_557_032),
    "wide_resnet50_2": ((3, 4, 6, 3), 128, 68_883_240),
    "wide_resnet101_2": ((3, 4, 23, 3), 128, 126_886_696),
}


def torchvision_spec(layers, base_width, num_classes=1000):
    spec = {"conv1.weight": (64, 3, 7, 7)}

    def bn(prefix, c):
        spec.update({f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
                     f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()})

    bn("bn1", 64)
    inplanes = 64
    for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers), start=1):
        width = planes * base_width // 64
        for b in range(n):
            p = f"layer{i}.{b}"
            spec[f"{p}.conv1.weight"] = (width, inplanes, 1, 1)
            bn(f"{p}.bn1", width)
            spec[f"{p}.conv2.weight"] = (width, width, 3, 3)
            bn(f"{p}.bn2", width)
            spec[f"{p}.conv3.weight"] = (planes * 4, width, 1, 1)
            bn(f"{p}.bn3", planes * 4)
            if b == 0:
                spec[f"{p}.downsample.0.weight"] = (planes * 4, inplanes, 1, 1)
                bn(f"{p}.downsample.1", planes * 4)
            inplanes = planes * 4
    spec["fc.weight"] = (num_classes, 2048)
    spec["fc.bias"] = (num_classes,)
    return spec


def random_state(spec):
    g = torch.Generator().manual_seed(0)
    state = {}
    for k, shape in spec.items():
        if k.endswith("num_batches_tracked"):
            state[k] = torch.tensor(100)
        elif k.endswith("running_var"):
            state[k] = torch.rand(shape, generator=g) + 0.5
        elif k.endswith(".weight") and len(shape) == 4:
            state[k] = torch.randn(shape, generator=g) * (2 / (shape[0] * shape[2] * shape[3])) ** 0.5
        else:
            state[k] = torch.randn(shape, generator=g) * 0.1
    return state


def reference_forward(s, x):
    """torchvision's ResNet.forward, written against the state dict alone (eval mode)."""
    def bn(p, x):
        return F.batch_norm(x, s[f"{p}.running_mean"], s[f"{p}.running_var"], s[f"{p}.weight"], s[f"{p}.bias"])

    x = F.max_pool2d(F.relu(bn("bn1", F.conv2d(x, s["conv1.weight"], stride=2, padding=3))), 3, 2, 1)
    for i in range(1, 5):
        b = 0
        while f"layer{i}.{b}.conv1.weight" in s:
            p, stride = f"layer{i}.{b}", 2 if (i > 1 and b == 0) else 1
            o = F.relu(bn(f"{p}.bn1", F.conv2d(x, s[f"{p}.conv1.weight"])))
            o = F.relu(bn(f"{p}.bn2", F.conv2d(o, s[f"{p}.conv2.weight"], stride=stride, padding=1)))
            o = bn(f"{p}.bn3", F.conv2d(o, s[f"{p}.conv3.weight"]))
            if f"{p}.downsample.0.weight" in s:
                x = bn(f"{p}.downsample.1", F.conv2d(x, s[f"{p}.downsample.0.weight"], stride=stride))
            x = F.relu(o + x)
            b += 1
    return F.linear(x.mean((2, 3)), s["fc.weight"], s["fc.bias"])


@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_state_dict_keys_and_shapes_match_torchvision_exactly(name):
    layers, base_width, n_params = TORCHVISION[name]
    spec = torchvision_spec(layers, base_width)
    with torch.device("meta"):
        model = create_model(name)
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == list(spec.items())
    assert sum(p.numel() for p in model.parameters()) == n_params
    learned = [shape for k, shape in spec.items() if k.endswith((".weight", ".bias"))]
    assert sum(torch.Size(shape).numel() for shape in learned) == n_params  # torchvision's documented count
    assert len(spec) == {"resnet50": 320, "wide_resnet50_2": 320, "wide_resnet101_2": 626}[name]


def test_wide_resnet50_2_loads_a_torchvision_pth_strictly_and_gives_torchvisions_outputs(tmp_path):
    state = random_state(torchvision_spec((3, 4, 6, 3), 128))
    path = tmp_path / "wide_resnet50_2-torchvision.pth"
    torch.save(state, path)
    model = load_external_weights(create_model("wide_resnet50_2"), path).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference_forward(state, x), rtol=1e-4, atol=1e-4)
    assert model.layer1[0].bn1.num_batches_tracked.item() == 100


def small_state(**kwargs):
    return ImageNetResNet((1, 1, 1, 1), 16, num_classes=5, **kwargs).state_dict()


def small_model():
    return ImageNetResNet((1, 1, 1, 1), 16, num_classes=5)


def test_safetensors_ddp_prefix_wrapped_checkpoints_and_missing_bn_counters_load(tmp_path):
    state = {k: v + 1 if v.is_floating_point() else v for k, v in small_state().items()}
    save_file(state, tmp_path / "w.safetensors")
    model = load_external_weights(small_model(), tmp_path / "w.safetensors")
    torch.testing.assert_close(model.fc.bias, state["fc.bias"])
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, tmp_path / "ddp.pth")
    torch.testing.assert_close(load_external_weights(small_model(), tmp_path / "ddp.pth").fc.bias, state["fc.bias"])
    torch.save({k: v for k, v in state.items() if "num_batches_tracked" not in k}, tmp_path / "timm.pth")
    load_external_weights(small_model(), tmp_path / "timm.pth")


def test_mismatched_weights_name_the_tensor(tmp_path):
    state = small_state()
    torch.save({k: v for k, v in state.items() if k != "layer2.0.conv2.weight"}, tmp_path / "missing.pth")
    with pytest.raises(UserError, match="'layer2.0.conv2.weight' .* is missing"):
        load_external_weights(small_model(), tmp_path / "missing.pth")
    torch.save({**state, "head.weight": torch.zeros(1)}, tmp_path / "extra.pth")
    with pytest.raises(UserError, match="'head.weight' .* has no place"):
        load_external_weights(small_model(), tmp_path / "extra.pth")
    torch.save(ImageNetResNet((1, 1, 1, 1), 16, num_classes=1000).state_dict(), tmp_path / "classes.pth")
    with pytest.raises(UserError, match=r"'fc.weight' has shape \(1000, 2048\) .* expects \(5, 2048\): "
                                        "build the model with num_classes=1000"):
        load_external_weights(small_model(), tmp_path / "classes.pth")


class NotWeights:
    pass


def test_unreadable_or_unsafe_files_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_external_weights(small_model(), tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="not a plain weights file"):
        load_external_weights(small_model(), tmp_path / "junk.pth")
    torch.save({"obj": NotWeights()}, tmp_path / "pickle.pth")  # would run code without weights_only
    with pytest.raises(UserError, match="not a plain weights file"):
        load_external_weights(small_model(), tmp_path / "pickle.pth")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(UserError, match="safetensors"):
        load_external_weights(small_model(), tmp_path / "junk.safetensors")
