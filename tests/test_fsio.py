"""wrn.fsio: a replaced file is the old one or the new one, never a torn one, and a failed write
leaves no temporary file behind."""

from __future__ import annotations

import pytest

from wrn.fsio import replacing, write_atomic, write_synced


def test_write_atomic_replaces_the_content(tmp_path):
    path = tmp_path / "summary.json"
    write_atomic(path, b"old")
    write_atomic(path, b"new")
    assert path.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_a_failed_write_keeps_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with replacing(path) as tmp:
            write_synced(tmp, b"half of the new")
            raise RuntimeError("exporter failed")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_write_synced_returns_the_size(tmp_path):
    assert write_synced(tmp_path / "state.json", b"12345") == 5
