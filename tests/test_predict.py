"""`wrn predict` and `wrn.predict` on a tiny trained run: the same answers as `wrn eval`, resizing,
flip TTA, archives, bad files, CSV/JSON output, and the errors a user meets."""

from __future__ import annotations

import csv
import json
import os
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import wrn
from wrn.cli import main
from wrn.errors import UserError

from helpers import write_image_folder  # tests/helpers.py

pytestmark = pytest.mark.usefixtures("one_thread")
CIFAR_JPEG = Path(__file__).resolve().parents[1] / "../shared/data/cifar10-jpeg.tar.xz"


def _train(data: Path, out: Path, *extra: str) -> Path:
    rc = main(["train", "--data", str(data), "--out", str(out), "--quiet", "model.name=wrn-10-1", "model.dropout=0",
               "train.epochs=2", "train.batch_size=32", "train.eval_batch_size=64", "accel.device=cpu",
               f"data.cache_dir={out.parent / 'cache'}", *extra])
    assert rc == 0
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_thread):
    """A WRN-10-1 trained 2 epochs on 32x32 colour-cast images (~75% test accuracy: far from
    all-right or all-wrong, so equal accuracies mean something)."""
    root = tmp_path_factory.mktemp("predict")
    data = write_image_folder(root / "data", 160, 48, 32)
    return _train(data, root / "run"), data


def _eval_accuracy(run: Path, data: Path, capsys) -> float:
    assert main(["eval", str(run), "--data", str(data), "--json"]) == 0
    return json.loads(capsys.readouterr().out)["accuracy"]


def _accuracy(preds) -> float:
    truth = [Path(name.split(":")[-1]).parent.name for name in preds.names]
    return float(np.mean([t == p for t, p in zip(truth, preds.labels)]))


def _eval_probabilities(run: Path) -> np.ndarray:
    """Softmax of each test image as `wrn eval` feeds it to the model (its loader, normalisation
    or ZCA whitening, memory format), in the test split's order (class, then file name)."""
    import torch

    from wrn.train.checkpoint import find_checkpoint, load_checkpoint
    from wrn.train.config import config_from_dict
    from wrn.train.data import build_data, find_whitening

    ckpt = find_checkpoint(run)
    model, state = load_checkpoint(ckpt)
    cfg = config_from_dict(state["config"])
    norm = state["normalize"]
    stats = (norm["mean"], norm["std"]) if norm.get("mean") is not None else None
    data = build_data(cfg, torch.device("cpu"), splits=("test",), stats=stats, whitening=find_whitening(cfg, ckpt))
    loader, augment = data.pick("test")
    with torch.no_grad():
        return torch.cat([model(augment.normalize(x)).softmax(1) for x, _ in loader.epoch(0)]).numpy()


@pytest.mark.parametrize("normalize", ["dataset", "zca"])
def test_same_accuracy_and_probabilities_as_eval(trained, normalize, capsys):
    run, data = trained
    size = 32
    if normalize == "zca":  # on 16x16 images: the whitening's 768x768 fit takes no time (3072x3072 would)
        data, size = write_image_folder(run.parent / "data16", 160, 48, 16), 16
        run = _train(data, run.parent / "zca-run", "data.normalize=zca")
    preds = wrn.predict(run, data / "test", device="cpu")  # where the run's own eval runs (accel.device=cpu)
    assert len(preds) == 48 and preds.probs.shape == (48, 4)
    assert _accuracy(preds) == _eval_accuracy(run, data, capsys)
    # Image by image, in the same order: the probabilities evaluation computes.
    assert [Path(n).parent.name for n in preds.names] == [f"class{c}" for c in range(4) for _ in range(12)]
    expected = _eval_probabilities(run)
    np.testing.assert_allclose(preds.probs, expected, atol=1e-5)
    assert np.ptp(expected.argmax(1)) > 0 or np.ptp(expected[:, 0]) > 1e-3  # not one constant answer
    # Control: the same model with other normalisation statistics answers differently.
    other = wrn.predict(wrn.load_checkpoint(run)[0], data / "test", mean=[0.5] * 3, std=[0.25] * 3, image_size=size)
    assert np.abs(other.probs - expected).max() > 1e-2


def test_decoded_arrays_and_files_agree(trained):
    run, data = trained
    from wrn.data import load_dataset

    split = load_dataset(data, cache_dir=run.parent / "cache")["test"]
    np.testing.assert_allclose(wrn.predict(run, split.images).probs, wrn.predict(run, data / "test").probs, atol=1e-6)


def test_cli_prints_top_k(trained, capsys):
    run, data = trained
    assert main(["predict", str(run), str(data / "test" / "class1"), "--top", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 12
    name, top = lines[0].split("\t")
    assert name.endswith("00001.png") and len(top.split("%")) - 1 == 2


def test_other_sizes_are_resized_and_centre_cropped(trained, tmp_path):
    run, _ = trained
    rng = np.random.default_rng(1)
    big = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)  # 64 wide, 48 high
    Image.fromarray(big).save(tmp_path / "big.png")
    # Shorter side to 32 (64x48 -> 42x32, bilinear), then the centre 32x32.
    expected = np.asarray(Image.fromarray(big).resize((42, 32), Image.BILINEAR).crop((5, 0, 37, 32)))
    got = wrn.predict(run, tmp_path / "big.png").probs
    np.testing.assert_allclose(got, wrn.predict(run, expected[None]).probs, atol=1e-6)
    squashed = np.asarray(Image.fromarray(big).resize((32, 32), Image.BILINEAR))  # control: no crop
    assert np.abs(got - wrn.predict(run, squashed[None]).probs).max() > 1e-4
    # Grayscale and RGBA files become RGB; a PIL image works as well as its file.
    Image.fromarray(big[..., 0]).save(tmp_path / "gray.png")
    Image.fromarray(big).convert("RGBA").save(tmp_path / "rgba.png")
    assert len(wrn.predict(run, [tmp_path / "gray.png", tmp_path / "rgba.png"])) == 2
    np.testing.assert_allclose(wrn.predict(run, Image.open(tmp_path / "big.png")).probs, got, atol=1e-6)


def test_the_input_size_recorded_in_the_checkpoint_wins(trained):
    run, _ = trained
    model, state = wrn.load_checkpoint(run)
    image = np.random.default_rng(3).integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
    small = np.asarray(Image.fromarray(image[0]).resize((16, 16), Image.BILINEAR))[None]
    at16 = (model, {**state, "input_size": [16, 16]})
    got = wrn.predict(at16, image).probs  # resized to 16x16 first
    np.testing.assert_allclose(got, wrn.predict(at16, small).probs, atol=1e-6)
    assert np.abs(got - wrn.predict((model, state), image).probs).max() > 1e-4  # control: 32 is not 16


def test_a_streaming_run_prepares_images_as_its_eval_loader(tmp_path):
    from wrn.data.streaming import ImageStream
    from wrn.inference import input_size, prepare

    root = write_image_folder(tmp_path / "big", 0, 2, 72)
    stream = ImageStream(root, "test", train=False, image_size=56)
    model = wrn.create_model("wrn-10-1", num_classes=4)
    size, streaming = input_size(model, {"config": {"data": {"streaming": True, "image_size": 56}}})
    assert (size, streaming) == (56, True)
    for i, path in enumerate(sorted(root.rglob("*.png"))):
        np.testing.assert_array_equal(prepare(str(path), size, streaming), stream[i][0])
    assert input_size(model, {})[0] == 32  # nothing recorded: the model's own input size


def test_tta_averages_the_flip(trained):
    run, _ = trained
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    both = wrn.predict(run, [image[None], image[None, :, ::-1]])
    assert both.names == ["#0", "#1"]
    plain, mirrored = both.probs
    tta = wrn.predict(run, image[None], tta=True).probs[0]
    np.testing.assert_allclose(tta, (plain + mirrored) / 2, atol=1e-6)
    assert np.abs(tta - plain).max() > 1e-4  # an asymmetric image: TTA changes the answer
    symmetric = np.concatenate([image[:, :16], image[:, :16][:, ::-1]], axis=1)  # control: its own mirror
    np.testing.assert_allclose(wrn.predict(run, symmetric[None], tta=True).probs,
                               wrn.predict(run, symmetric[None]).probs, atol=1e-6)


def test_archives_give_the_folder_answers(trained, tmp_path):
    run, data = trained
    folder = wrn.predict(run, data / "test")
    with tarfile.open(tmp_path / "test.tar.gz", "w:gz") as tf:
        tf.add(data / "test", arcname="test")
    with zipfile.ZipFile(tmp_path / "test.zip", "w") as zf:
        for p in sorted((data / "test").rglob("*.png")):
            zf.write(p, p.relative_to(data).as_posix())
    for archive in ("test.tar.gz", "test.zip"):
        preds = wrn.predict(run, tmp_path / archive)
        assert [n.split(":", 1)[1] for n in preds.names] == [Path(n).relative_to(data).as_posix() for n in folder.names]
        np.testing.assert_allclose(preds.probs, folder.probs, atol=1e-6)


def test_bad_files_are_skipped_or_fatal_with_strict(trained, tmp_path, capsys):
    run, data = trained
    images = tmp_path / "images"
    images.mkdir()
    good = data / "test" / "class0" / "00000.png"
    (images / "good.png").write_bytes(good.read_bytes())
    (images / "notes.png").write_text("not an image")
    (images / "cut.png").write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    (images / "readme.txt").write_text("ignored: not an image file name")
    assert main(["predict", str(run), str(images)]) == 0
    out, err = capsys.readouterr()
    assert [line.split("\t")[0] for line in out.splitlines()] == [str(images / "good.png")]
    assert len(err.splitlines()) == 2 and "cut.png" in err and "notes.png" in err
    assert main(["predict", str(run), str(images), "--strict", "--out", str(tmp_path / "p.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cut.png" in err and "--strict" in err
    assert sorted(os.listdir(tmp_path)) == ["images"]  # no output file, no temporary


def test_csv_and_json_outputs_parse(trained, tmp_path, capsys):
    run, data = trained
    folder = data / "test" / "class2"
    assert main(["predict", str(run), str(folder), "--top", "3", "--out", str(tmp_path / "p.csv")]) == 0
    assert main(["predict", str(run), str(folder), "--top", "9", "--out", str(tmp_path / "p.json"), "--tta"]) == 0
    capsys.readouterr()
    rows = list(csv.DictReader(open(tmp_path / "p.csv", newline="")))
    assert len(rows) == 12 and list(rows[0]) == ["file", "class1", "prob1", "class2", "prob2", "class3", "prob3"]
    probs = [float(rows[0][f"prob{i}"]) for i in (1, 2, 3)]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-5
    doc = json.loads((tmp_path / "p.json").read_text())
    assert doc["classes"] == ["class0", "class1", "class2", "class3"] and doc["skipped"] == []
    first = doc["predictions"][0]
    assert first["file"] == rows[0]["file"] and len(first["top"]) == 4  # --top 9: all 4 classes
    assert abs(sum(t["prob"] for t in first["top"]) - 1) < 1e-5


def _one_line_error(argv, capsys, *words) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and all(w in err for w in words), err


def test_user_errors(trained, tmp_path, capsys):
    run, data = trained
    _one_line_error(["predict", str(run), str(tmp_path / "nope.png")], capsys, "nope.png", "no such file")
    _one_line_error(["predict", str(tmp_path / "norun"), str(data / "test")], capsys, "norun")
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "config.yaml").write_text((run / "config.yaml").read_text())
    _one_line_error(["predict", str(fresh), str(data / "test")], capsys, "no checkpoint")
    _one_line_error(["predict", str(run), str(data / "test"), "--out", str(tmp_path / "p.txt")], capsys, ".csv")
    _one_line_error(["predict", str(run), str(data / "test"), "--top", "0"], capsys, "--top")
    _one_line_error(["predict", str(run), str(data / "test"), "--batch-size", "0"], capsys, "--batch-size")
    (tmp_path / "empty").mkdir()
    _one_line_error(["predict", str(run), str(tmp_path / "empty")], capsys, "no images")
    with pytest.raises(UserError, match="mean= and std="):
        wrn.predict(wrn.load_checkpoint(run)[0], data / "test")
    with pytest.raises(UserError, match="uint8"):
        wrn.predict(run, np.zeros((2, 32, 32, 3), np.float32))


@pytest.mark.skipif(not CIFAR_JPEG.is_file(), reason="needs ../shared/data/cifar10-jpeg.tar.xz")
@pytest.mark.skipif(os.environ.get("CI") == "true", reason="~30 s: reads the whole archive and trains")
def test_cifar10_jpegs_same_accuracy_as_eval(tmp_path, capsys):
    """Real CIFAR-10 JPEGs: 640 training and 300 test images, 2 epochs of WRN-10-1."""
    per_class = {"train": 64, "test": 30}
    counts: dict[tuple[str, str], int] = {}
    with tarfile.open(CIFAR_JPEG, "r|*") as tf:
        for member in tf:
            parts = member.name.split("/")
            if not member.isfile() or len(parts) != 3 or counts.get((parts[0], parts[1]), 0) >= per_class[parts[0]]:
                continue
            counts[parts[0], parts[1]] = counts.get((parts[0], parts[1]), 0) + 1
            (tmp_path / "data" / parts[0] / parts[1]).mkdir(parents=True, exist_ok=True)
            (tmp_path / "data" / member.name).write_bytes(tf.extractfile(member).read())
    run = _train(tmp_path / "data", tmp_path / "run")
    preds = wrn.predict(run, tmp_path / "data" / "test", device="cpu")
    assert len(preds) == 300
    accuracy = _accuracy(preds)
    assert accuracy == _eval_accuracy(run, tmp_path / "data", capsys)
    assert 0.1 < accuracy < 0.9  # neither constant nor perfect: the equality says something


def test_a_run_with_precision_auto_predicts_and_takes_accel_overrides(trained, tmp_path, capsys):
    """Every run of the quick preset has accel.precision=auto: predict resolves it as training
    recorded it (it failed with "unknown precision 'auto'"). An accel.* key=value among the paths
    is an override, not an image; a key the checkpoint fixes is refused in one line."""
    _, data = trained
    run = _train(data, tmp_path / "auto", "accel.precision=auto")
    images = str(data / "test" / "class1")
    assert main(["predict", run.as_posix(), images, "--top", "1"]) == 0
    default = capsys.readouterr().out
    assert len(default.splitlines()) == 12
    assert main(["predict", str(run), images, "accel.precision=fp32", "--top", "1"]) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 12 and "accel.precision" not in out + err  # not read as an image path
    assert main(["predict", str(run), images, "model.name=wrn-16-1"]) == 2
    err = capsys.readouterr().err
    assert "model.name" in err and err.count("\n") == 1
    assert len(wrn.predict(run, data / "test" / "class1").names) == 12  # the Python API too
