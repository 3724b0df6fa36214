"""Fetch the official dataset files: checksummed, resumable, atomic, with a progress bar.

A download goes to ``<file>.part`` (continued with an HTTP Range request when one is already
there), is checked against the official md5, and only then renamed to ``<file>``. A file that
exists under its final name has therefore passed its checksum.
"""

from __future__ import annotations

import http.client
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from wrn.data import catalog
from wrn.errors import UserError
from wrn.fsio import file_digest


def md5sum(path: Path) -> str:
    return file_digest(path, "md5")


def download(url: str, dest: Path, md5: str, *, quiet: bool | None = None, timeout: float = 30.0) -> Path:
    """Download ``url`` to ``dest`` unless it is there; resume a ``.part``; verify the md5."""
    if dest.is_file():
        return dest
    quiet = not sys.stderr.isatty() if quiet is None else quiet
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        try:
            response = urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as e:
            if e.code != 416 or not have:  # 416: the .part already holds the whole file
                raise
            response = None
        if response is not None:
            with response:
                if have and response.status != 206:
                    have = 0  # the server ignored the Range header: start over
                length = response.headers.get("Content-Length")
                total = have + int(length) if length else None
                with open(part, "ab" if have else "wb") as f, tqdm(
                    total=total, initial=have, unit="B", unit_scale=True, desc=dest.name, disable=quiet
                ) as bar:
                    for block in iter(lambda: response.read(1 << 20), b""):
                        f.write(block)
                        bar.update(len(block))
                    f.flush()
                    os.fsync(f.fileno())
                if total is not None and part.stat().st_size < total:
                    raise urllib.error.URLError(f"connection closed after {part.stat().st_size} of {total} bytes")
    except urllib.error.HTTPError as e:
        raise UserError(f"download of {url} failed (HTTP {e.code} {e.reason}): check the URL/mirror, or pass a local copy with --data PATH") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        reason = getattr(e, "reason", None) or e
        raise UserError(
            f"cannot download {url} ({reason}); the partial file is kept for a resume: offline? pass a local path with --data PATH"
        ) from None
    got = md5sum(part)
    if got != md5:
        part.unlink()
        raise UserError(f"{dest}: checksum mismatch (md5 {got}, expected {md5}): the download was corrupted; run again to re-download")
    os.replace(part, dest)
    return dest


def fetch_dataset(name: str, root: Path, *, mirror: str | None = None, quiet: bool | None = None) -> Path:
    """Download dataset ``name`` into ``root/downloads`` (once); the path to read it from.

    ``mirror`` (or ``$WRN_DATA_MIRROR``) replaces the official base URL: files are fetched as
    ``<mirror>/<official file name>``.
    """
    spec = catalog.get(name)
    if not spec.files:
        raise UserError(f"{name} cannot be downloaded: pass the path of a local copy with --data PATH")
    base = mirror or os.environ.get("WRN_DATA_MIRROR") or spec.base_url
    folder = root / "downloads" / spec.name
    paths = [download(base.rstrip("/") + "/" + f.filename, folder / f.filename, f.md5, quiet=quiet) for f in spec.files]
    return paths[0] if len(paths) == 1 else folder
