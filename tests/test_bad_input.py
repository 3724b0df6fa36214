"""Bad input: generated invalid configs and command lines are one line on stderr naming the key,
exit 2, no traceback, no hang, no work started; damaged or odd datasets are clear errors or a
documented handling (RELIABILITY.md). Everything runs in-process through ``wrn.cli.main``."""

from __future__ import annotations

import contextlib
import pickle
import signal
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from wrn.cli import main
from wrn.data import load_dataset
from wrn.errors import UserError
from wrn.train.config import load_config, valid_keys

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@contextlib.contextmanager
def within(seconds: int):
    """Fail instead of hanging: SIGALRM after ``seconds``."""
    def alarm(signum, frame):
        raise AssertionError(f"no answer within {seconds}s (a hang)")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``wrn argv``; argparse's own exits count as exit codes."""
    capsys.readouterr()
    with within(30):
        try:
            rc = main(argv)
        except SystemExit as e:
            rc = e.code
    out = capsys.readouterr()
    return rc, out.out, out.err


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0] and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module", autouse=True)
def warm():
    load_config()  # the first meta-device model build imports a lot; keep it out of the examples


# -- configs: one or two invalid key=value among valid ones -----------------------------------------

def _not_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return text.strip().lower() not in ("none", "null", "")
    return False


WORDS = st.text(st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), min_size=1, max_size=8)
NOT_NUMBER = WORDS.filter(_not_number)
NEGATIVE = st.integers(max_value=-1).map(str)
BELOW_ONE = st.integers(max_value=0).map(str)
FRACTION = st.floats(min_value=-1e6, max_value=1e6).filter(lambda x: not x.is_integer()).map(repr)
NONFINITE = st.sampled_from(["nan", "inf", "-inf", "NaN"])


def floats_outside(low: float, high: float, *, low_ok: bool = True, high_ok: bool = False):
    """Values outside [low, high) (by default), as text, plus NaN/inf."""
    below = st.floats(max_value=low, exclude_max=low_ok, allow_nan=False, allow_infinity=False)
    above = st.floats(min_value=high, exclude_min=high_ok, allow_nan=False, allow_infinity=False)
    return st.one_of(below.filter(lambda x: x != 0 or not low_ok), above, NONFINITE).map(str)


INVALID = {
    "train.epochs": st.one_of(BELOW_ONE, NOT_NUMBER, FRACTION),
    "train.batch_size": st.one_of(BELOW_ONE, NOT_NUMBER, FRACTION),
    "train.eval_batch_size": st.one_of(BELOW_ONE, NOT_NUMBER),
    "train.seed": st.one_of(NEGATIVE, NOT_NUMBER),
    "train.checkpoint_every": st.one_of(NEGATIVE, NOT_NUMBER, FRACTION),
    "train.keep_every": st.one_of(NEGATIVE, NOT_NUMBER),
    "train.skip_nonfinite": WORDS.filter(lambda s: s.strip().lower() not in ("true", "yes", "on", "1", "false", "no", "off", "0")),
    "data.val_size": st.one_of(NEGATIVE, NOT_NUMBER, FRACTION),
    "data.subset": st.one_of(NEGATIVE, NOT_NUMBER),
    "data.cutout": st.one_of(NEGATIVE, NOT_NUMBER),
    "data.normalize": WORDS.filter(lambda s: s not in ("dataset", "paper", "none")),
    "data.policy": WORDS.filter(lambda s: s not in ("none", "autoaugment", "randaugment", "trivialaugment")),
    "data.policy_ops": st.one_of(BELOW_ONE, st.integers(17, 10**9).map(str), NOT_NUMBER),
    "data.policy_magnitude": st.one_of(NEGATIVE, st.integers(31, 10**9).map(str), NOT_NUMBER),
    "data.augment": WORDS.filter(lambda s: s.strip().lower() not in ("true", "yes", "on", "1", "false", "no", "off", "0")),
    "model.name": st.one_of(st.from_regex(r"wrn-[0-9]{1,3}-[0-9]{1,2}", fullmatch=True).filter(
        lambda n: (int(n.split("-")[1]) - 4) % 6 or int(n.split("-")[2]) == 0), st.from_regex(r"x[a-z0-9-]{0,10}", fullmatch=True)),
    "model.dropout": floats_outside(0.0, 1.0),
    "model.block": st.one_of(st.lists(st.integers(-3, 8).filter(lambda k: k < 1 or k % 2 == 0), min_size=1, max_size=3)
                             .map(lambda ks: ",".join(map(str, ks))), NOT_NUMBER.filter(lambda s: "," not in s)),
    "model.blocks_per_group": st.one_of(BELOW_ONE, st.integers(2001, 10**9).map(str)),
    "model.num_classes": st.one_of(NEGATIVE, NOT_NUMBER),
    "optim.lr": st.one_of(st.floats(max_value=0.0, allow_nan=False).map(str), NONFINITE, NOT_NUMBER),
    "optim.momentum": floats_outside(0.0, 1.0),
    "optim.weight_decay": st.one_of(st.floats(max_value=-1e-12, allow_nan=False).map(str), NONFINITE),
    "optim.gamma": floats_outside(0.0, 1.0, low_ok=False, high_ok=True),
    "optim.label_smoothing": floats_outside(0.0, 1.0),
    "optim.warmup_epochs": st.one_of(st.floats(max_value=-1e-9, allow_nan=False).map(str),
                                     st.floats(min_value=200, allow_nan=False).map(str), NONFINITE),
    "optim.schedule": WORDS.filter(lambda s: s not in ("step", "cosine", "onecycle")),
    "optim.milestones": st.lists(st.integers(-5, 300), min_size=2, max_size=4).filter(
        lambda ms: ms != sorted(set(ms)) or min(ms) < 1).map(lambda ms: ",".join(map(str, ms))),
    "optim.base_batch_size": BELOW_ONE,
    "optim.nesterov": WORDS.filter(lambda s: s.strip().lower() not in ("true", "yes", "on", "1", "false", "no", "off", "0")),
    "accel.precision": WORDS.filter(lambda s: s not in ("fp32", "bf16")),
    "accel.device": WORDS.filter(lambda s: s not in ("auto", "cpu", "cuda") and not (s.startswith("cuda:") and s[5:].isdigit())),
    "accel.compile": WORDS.filter(lambda s: s.strip().lower() not in ("true", "yes", "on", "1", "false", "no", "off", "0")),
    "log.every_steps": st.one_of(BELOW_ONE, NOT_NUMBER),
}
# Valid and independent of every key above, so they never make an invalid value valid.
NEUTRAL = ["train.seed=3", "log.test_every_epoch=true", "data.cutout=8", "accel.channels_last=true", "optim.lr=0.05"]
UNKNOWN = st.from_regex(r"[a-z]{1,8}\.[a-z_]{1,12}", fullmatch=True).filter(lambda k: k not in valid_keys())


@st.composite
def bad_overrides(draw):
    keys = draw(st.lists(st.sampled_from(sorted(INVALID)), min_size=1, max_size=2, unique=True))
    bad = [(k, f"{k}={draw(INVALID[k])}") for k in keys]
    if draw(st.booleans()):
        key = draw(UNKNOWN)
        bad.append((key, f"{key}={draw(WORDS)}"))
    neutral = [n for n in draw(st.lists(st.sampled_from(NEUTRAL), max_size=3, unique=True))
               if n.split("=")[0] not in keys]
    order = draw(st.permutations([text for _, text in bad] + neutral))
    return [k for k, _ in bad], order


def test_invariants_of_the_generators():
    assert set(INVALID) <= set(valid_keys())
    load_config(overrides=NEUTRAL)  # the neutral overrides are valid together


@SETTINGS
@given(case=bad_overrides())
def test_invalid_overrides_are_one_line_naming_the_key(case, tmp_path, capsys):
    keys, overrides = case
    out = tmp_path / "run"
    empty = tmp_path / "no-images"
    empty.mkdir(exist_ok=True)
    rc, _, err = run_cli(["train", "--out", str(out), "--data", str(empty), *overrides], capsys)
    line = one_error_line(err)
    assert rc == 2 and line.startswith("wrn: error:")
    assert any(k in line for k in keys), (keys, line)
    assert not out.exists()  # rejected before any work


@SETTINGS
@given(key=st.sampled_from(sorted(INVALID)), data=st.data())
def test_invalid_config_file_values_are_one_line_naming_the_key(key, data, tmp_path, capsys):
    section, name = key.split(".")
    value = data.draw(INVALID[key])
    (tmp_path / "c.yaml").write_text(f"{section}:\n  {name}: {value!r}\n")
    rc, _, err = run_cli(["train", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run")], capsys)
    assert rc == 2 and key in one_error_line(err)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("text,words", [
    ("[1, 2]", "expected a mapping of sections"), ("just text", "expected a mapping of sections"),
    ("train: 3", "section 'train' must be a mapping"), ("train:\n  epochs: [1, 2]", "train.epochs"),
    ("model:\n  block: {a: 1}", "model.block"), ("optim:\n  lr: null", "optim.lr may not be empty"),
    ("train:\n  epochs: 2\n   bad indent: 1", "is not valid YAML"), ("!!python/object:os.system {}", "is not valid YAML"),
])
def test_malformed_config_files(tmp_path, capsys, text, words):
    (tmp_path / "c.yaml").write_text(text)
    rc, _, err = run_cli(["train", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run")], capsys)
    assert rc == 2 and words in one_error_line(err)


# -- command lines -----------------------------------------------------------------------------------

OPTIONS = ["--preset", "--config", "--out", "--resume", "--quiet", "--split", "--batch-size", "--onnx", "--input",
           "--device", "--json", "--precision", "--opset", "--no-verify", "--seeds", "--dry-run", "--help", "-x", "--"]
TOKEN = st.one_of(st.sampled_from(OPTIONS), st.integers(-10**6, 10**6).map(str), WORDS)


@st.composite
def command_lines(draw):
    command = draw(st.sampled_from(["train", "eval", "export", "info", "bench", "report", "sweep", "nope", ""]))
    tokens = draw(st.lists(TOKEN, max_size=6))
    if command == "train":  # never a real training or download: the data argument is always missing
        return [command, *tokens, "--data", "missing/dataset", "--out", "run"]
    if command in ("eval", "export"):
        return [command, "missing-" + draw(WORDS), *tokens]
    if command in ("info", "bench"):  # model names that are not registered: nothing is built or timed
        return [command, "x-" + draw(WORDS), *tokens]
    if command == "sweep":  # a table that does not exist: nothing is launched
        return [command, "no-table-" + draw(WORDS), *tokens]
    return [command, *tokens] if command else tokens


@SETTINGS
@given(argv=command_lines())
def test_random_command_lines_never_trace_back(argv, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, out, err = run_cli(argv, capsys)
    assert "Traceback" not in out + err
    if rc == 0:  # only --help gets here
        assert "--help" in argv or "-h" in argv, (argv, out)
    else:
        assert rc == 2, (argv, rc, err)
        one_error_line(err)
    assert not (tmp_path / "run").exists()


# -- datasets ------------------------------------------------------------------------------------------

TINY = ["model.name=wrn-10-1", "model.dropout=0", "train.epochs=1", "train.batch_size=4", "data.val_size=0",
        "accel.compile=false", "accel.precision=fp32", "accel.channels_last=false"]


def image_tree(root: Path, classes=("a", "b"), n: int = 4, size: int = 8, mode: str = "RGB", empty=()) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            if (split, c) not in empty:
                for i in range(n):
                    Image.fromarray(rng.integers(0, 255, (size, size, 3)).astype(np.uint8)).convert(mode).save(d / f"{i}.png")
    return root


def train_on(data: Path, tmp_path: Path, capsys, *extra: str) -> str:
    """The one error line of ``wrn train`` on ``data``; no training may have started."""
    out = tmp_path / "run"
    rc, _, err = run_cli(["train", "--quiet", "--data", str(data), "--out", str(out), *TINY,
                          f"data.cache_dir={tmp_path / 'cache'}", *extra], capsys)
    line = one_error_line(err)
    assert rc == 2 and line.startswith("wrn: error:")
    assert not (out / "log.jsonl").exists()
    return line


def archive(tree: Path, dest: Path) -> Path:
    if dest.suffix == ".zip":
        with zipfile.ZipFile(dest, "w") as zf:
            for f in sorted(tree.rglob("*.png")):
                zf.write(f, f.relative_to(tree))
    else:
        with tarfile.open(dest, "w:" + {".gz": "gz", ".xz": "xz", ".tar": ""}[dest.suffix]) as tf:
            tf.add(tree, arcname=".")
    return dest


@pytest.mark.parametrize("name,cut", [("d.tar.gz", 0.5), ("d.tar.xz", 0.5), ("d.tar", 0.7), ("d.zip", 0.5),
                                      ("d.zip", 0.0), ("d.tar.gz", 0.0)])
def test_truncated_or_corrupt_archives(tmp_path, capsys, name, cut):
    path = archive(image_tree(tmp_path / "tree", n=16), tmp_path / name)
    data = path.read_bytes()
    # cut 0: the right size, but garbage from the middle on (a corrupt download)
    path.write_bytes(data[: int(len(data) * cut)] if cut else data[: len(data) // 2] + b"\x5a" * (len(data) - len(data) // 2))
    line = train_on(path, tmp_path, capsys)
    assert str(path) in line and ("damaged or truncated" in line or "cannot decode" in line), line


def test_corrupt_image_is_named(tmp_path, capsys):
    tree = image_tree(tmp_path / "tree")
    (tree / "train" / "a" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    line = train_on(tree, tmp_path, capsys)
    assert "bad.png: cannot decode the image" in line and "replace or remove that file" in line


def test_image_of_the_wrong_size_is_named(tmp_path, capsys):
    tree = image_tree(tmp_path / "tree")
    Image.new("RGB", (12, 10)).save(tree / "test" / "b" / "odd.png")
    line = train_on(tree, tmp_path, capsys)
    assert "odd.png: image size 12x10 differs from 8x8" in line


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "1", "CMYK", "I;16"])
def test_other_image_modes_are_converted_to_rgb(tmp_path, mode):
    # Documented handling: every image is converted with Pillow's convert("RGB"); alpha is dropped.
    tree = image_tree(tmp_path / "tree", mode="RGB")
    src = tree / "train" / "a" / "0.png"
    img = Image.open(src).convert(mode)
    odd = src.with_suffix(".tiff" if mode == "CMYK" else ".png")
    if mode == "CMYK":
        odd = src.with_suffix(".jpg")
    src.unlink()
    img.save(odd)
    ds = load_dataset(tree, cache_dir=tmp_path / "cache")["train"]
    assert ds.images.dtype == np.uint8 and ds.images.shape[1:] == (8, 8, 3)
    with Image.open(odd) as im:
        expected = np.asarray(im.convert("RGB"))
    assert any(np.array_equal(x, expected) for x in ds.images)


def cifar10_folder(root: Path, labels: list[int]) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    n = len(labels)
    batch = {b"data": np.zeros((n, 3072), np.uint8), b"labels": labels}
    for i in range(1, 6):
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch, protocol=2))
    (folder / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    names = [c.encode() for c in ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")]
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}, protocol=2))
    return folder


@pytest.mark.parametrize("bad", [10, -1, 255])
def test_cifar_labels_out_of_range(tmp_path, capsys, bad):
    folder = cifar10_folder(tmp_path, [0, 1, bad, 3])
    with pytest.raises(UserError, match=f"label {bad} is out of range for 10 classes"):
        load_dataset(folder, cache_dir=tmp_path / "cache")
    line = train_on(folder, tmp_path, capsys)
    assert str(folder) in line and f"label {bad} is out of range" in line


def write_mat(path: Path, variables: dict[str, tuple[np.ndarray, int, int]]) -> Path:
    """A MATLAB v5 file, compressed like MATLAB's save: {name: (array, mx class, mi type)}."""
    def element(mi_type: int, data: bytes) -> bytes:
        return struct.pack("<II", mi_type, len(data)) + data + b"\0" * (-len(data) % 8)

    out = bytearray(b"MATLAB 5.0 MAT-file".ljust(116, b" ")) + b"\0" * 8 + struct.pack("<H", 0x0100) + b"IM"
    for name, (array, mx_class, mi_type) in variables.items():
        body = element(6, struct.pack("<II", mx_class, 0)) + element(5, np.asarray(array.shape, "<i4").tobytes())
        body += struct.pack("<I", (len(name) << 16) | 1) + name.encode().ljust(4, b"\0")
        body += element(mi_type, np.asarray(array, {2: "<u1", 9: "<f8"}[mi_type]).tobytes(order="F"))
        packed = zlib.compress(struct.pack("<II", 14, len(body)) + body)
        out += struct.pack("<II", 15, len(packed)) + packed
    path.write_bytes(bytes(out))
    return path


@pytest.mark.parametrize("bad", [0, 11])
def test_svhn_labels_out_of_range(tmp_path, bad):
    folder = tmp_path / "svhn"
    folder.mkdir()
    x = np.zeros((32, 32, 3, 4), np.uint8)
    for split in ("train", "test"):
        y = np.array([[1], [10], [bad], [3]], np.float64)
        write_mat(folder / f"{split}_32x32.mat", {"X": (x, 9, 2), "y": (y, 6, 9)})
    with pytest.raises(UserError, match=f"train_32x32.mat: damaged .*label {bad} is out of range"):
        load_dataset(folder, cache_dir=tmp_path / "cache")


def test_class_folder_empty_everywhere_is_ignored(tmp_path):
    # Documented handling: a folder without images is not a class.
    tree = image_tree(tmp_path / "tree", classes=("a", "b", "c"), empty={("train", "c"), ("test", "c")})
    assert load_dataset(tree, cache_dir=tmp_path / "cache")["train"].classes == ["a", "b"]


def test_class_without_training_images_is_an_error(tmp_path, capsys):
    tree = image_tree(tmp_path / "tree", empty={("train", "b")})
    line = train_on(tree, tmp_path, capsys)
    assert "class 'b' has no training images" in line and "empty train/b/ folder" in line


def test_dataset_with_one_class_is_an_error(tmp_path, capsys):
    line = train_on(image_tree(tmp_path / "tree", classes=("only",)), tmp_path, capsys)
    assert "the data has only 1 class ['only']: a classifier needs at least 2" in line


def test_num_classes_below_the_datas_classes_is_an_error(tmp_path, capsys):
    line = train_on(image_tree(tmp_path / "tree", classes=("a", "b", "c")), tmp_path, capsys, "model.num_classes=2")
    assert line.startswith("wrn: error: model.num_classes: 2 is fewer than the 3 classes in the data")


def test_images_too_small_for_the_crop_are_an_error(tmp_path, capsys):
    line = train_on(image_tree(tmp_path / "tree", size=3), tmp_path, capsys)
    assert line == ("wrn: error: data.augment: the images are 3x3, too small for the 4-pixel reflect-pad crop: "
                    "set data.augment=false")


@pytest.mark.parametrize("layout,words", [
    ("empty", "no images found"), ("no-test", "it needs 'train' and 'test'"), ("no-train", "it needs 'train' and 'test'"),
    ("not-a-dataset", "unknown dataset format"),
])
def test_wrong_layouts(tmp_path, capsys, layout, words):
    tree = image_tree(tmp_path / "tree")
    if layout == "empty":
        tree = tmp_path / "empty"
        tree.mkdir()
    elif layout in ("no-test", "no-train"):
        import shutil

        shutil.rmtree(tree / ("test" if layout == "no-test" else "train"))
    else:
        tree = tmp_path / "notes.txt"
        tree.write_text("hello")
    assert words in train_on(tree, tmp_path, capsys)
