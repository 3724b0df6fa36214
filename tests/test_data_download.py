"""Download by name against a local HTTP server (127.0.0.1) serving official-format archives."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import threading

import numpy as np
import pytest
from test_data_formats import write_cifar10_archive, write_svhn

from wrn.data import catalog, load_dataset
from wrn.errors import UserError


class Server:
    """Serves ``files`` (name -> bytes), honours ``Range: bytes=N-``, records requests."""

    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.requests: list[tuple[str, str | None]] = []
        self.cut_after: int | None = None  # send only this many bytes of the next response
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                name = self.path.rsplit("/", 1)[-1]
                rng = self.headers.get("Range")
                outer.requests.append((name, rng))
                if name not in outer.files:
                    self.send_error(404)
                    return
                data = outer.files[name]
                start = int(rng.split("=")[1].split("-")[0]) if rng else 0
                if start >= len(data) and rng:
                    self.send_response(416)
                    self.end_headers()
                    return
                self.send_response(206 if rng else 200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
                if outer.cut_after is not None:
                    body, outer.cut_after = body[: outer.cut_after], None
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/files"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def cifar_server(tmp_path, monkeypatch):
    path, batches = write_cifar10_archive(tmp_path / "cifar-10-python.tar.gz", np.random.default_rng(0))
    data = path.read_bytes()
    server = Server({"cifar-10-python.tar.gz": data})
    fake = dataclasses.replace(catalog.get("cifar10"), files=(catalog.RemoteFile("cifar-10-python.tar.gz", hashlib.md5(data).hexdigest()),))
    monkeypatch.setitem(catalog.DATASETS, "cifar10", fake)
    yield server, data, batches
    server.close()


def test_download_by_name_then_cached(cifar_server, tmp_path):
    server, data, batches = cifar_server
    ds = load_dataset("cifar10", cache_dir=tmp_path / "c", mirror=server.url, quiet=True)
    np.testing.assert_array_equal(ds["test"].images, batches["test_batch"][0])
    final = tmp_path / "c" / "downloads" / "cifar10" / "cifar-10-python.tar.gz"
    assert final.read_bytes() == data and not final.with_name(final.name + ".part").exists()
    load_dataset("cifar10", cache_dir=tmp_path / "c", mirror=server.url)
    assert len(server.requests) == 1  # the second load neither downloads nor decodes


def test_resume_uses_range_on_the_part_file(cifar_server, tmp_path, monkeypatch):
    server, data, _ = cifar_server
    monkeypatch.setenv("WRN_DATA_MIRROR", server.url)
    part = tmp_path / "c" / "downloads" / "cifar10" / "cifar-10-python.tar.gz.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(data[:1000])
    load_dataset("cifar10", cache_dir=tmp_path / "c", quiet=True)
    assert server.requests == [("cifar-10-python.tar.gz", "bytes=1000-")]
    assert part.with_suffix("").read_bytes() == data


def test_interrupted_download_keeps_part_and_resumes(cifar_server, tmp_path):
    server, data, _ = cifar_server
    server.cut_after = 700
    with pytest.raises(UserError, match="--data"):
        load_dataset("cifar10", cache_dir=tmp_path / "c", mirror=server.url, quiet=True)
    part = tmp_path / "c" / "downloads" / "cifar10" / "cifar-10-python.tar.gz.part"
    assert part.stat().st_size == 700
    load_dataset("cifar10", cache_dir=tmp_path / "c", mirror=server.url, quiet=True)
    assert server.requests[-1] == ("cifar-10-python.tar.gz", "bytes=700-")
    assert part.with_suffix("").read_bytes() == data


def test_checksum_mismatch_deletes_part(cifar_server, tmp_path):
    server, data, _ = cifar_server
    server.files["cifar-10-python.tar.gz"] = data[:-1] + b"!"
    with pytest.raises(UserError, match="checksum mismatch") as err:
        load_dataset("cifar10", cache_dir=tmp_path / "c", mirror=server.url, quiet=True)
    assert "cifar-10-python.tar.gz" in str(err.value) and "\n" not in str(err.value)
    folder = tmp_path / "c" / "downloads" / "cifar10"
    assert list(folder.iterdir()) == []
    assert not (tmp_path / "c" / "decoded").exists()


def test_offline_says_pass_a_local_path(tmp_path):
    with pytest.raises(UserError, match="pass a local path with --data"):
        load_dataset("cifar100", cache_dir=tmp_path / "c", mirror="http://127.0.0.1:9", quiet=True)


def test_http_error_is_one_line(cifar_server, tmp_path):
    server, _, _ = cifar_server
    server.files.clear()
    with pytest.raises(UserError, match="HTTP 404") as err:
        load_dataset("cifar10", cache_dir=tmp_path / "c", mirror=server.url, quiet=True)
    assert "\n" not in str(err.value)


def test_svhn_by_name_downloads_three_mat_files(tmp_path, monkeypatch):
    truth = write_svhn(tmp_path / "src", np.random.default_rng(1))
    files = {p.name: p.read_bytes() for p in (tmp_path / "src").iterdir()}
    server = Server({n: b for n, b in files.items()})
    spec = catalog.get("svhn")
    remotes = tuple(catalog.RemoteFile(r.filename, hashlib.md5(files[r.filename]).hexdigest()) for r in spec.files)
    monkeypatch.setitem(catalog.DATASETS, "svhn", dataclasses.replace(spec, files=remotes))
    try:
        ds = load_dataset("svhn", cache_dir=tmp_path / "c", mirror=server.url, quiet=True)
    finally:
        server.close()
    assert sorted(ds) == ["extra", "test", "train"]
    np.testing.assert_array_equal(ds["extra"].labels, truth["extra"][1])


def test_official_table():
    assert catalog.get("cifar10").files[0].md5 == "c58f30108f718f92721af3b95e74349a"
    assert catalog.get("cifar100").files[0].md5 == "eb9058c3a382ffc7106e4002c42a8d85"
    assert [f.filename for f in catalog.get("svhn").files] == ["train_32x32.mat", "test_32x32.mat", "extra_32x32.mat"]
