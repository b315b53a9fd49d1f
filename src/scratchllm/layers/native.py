"""The package's few C kernels (layers/*.c), compiled once per CPU with the machine's C compiler and
loaded with ctypes: no build step at install, nothing to download.

A kernel is built the first time it is asked for, with `-O3 -march=native` (the CPU at hand: AVX2,
AVX512, ...), into the cache (fetch.cache_dir() / "kernels"), under a name that hashes its source, the
compiler's version, the flags and this CPU's model and feature flags, so a changed file, compiler or
machine builds afresh and a shared home directory never hands one CPU another's code. The library is
written beside its final name and renamed into place, so two processes building at once never load a
half-written file. Without a compiler (or with SCRATCHLLM_NO_NATIVE=1) `load` returns None and the caller
takes its plain torch path; `why_not` says why.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

from scratchllm.fetch import cache_dir

# tried in order: the CPU's own instructions with OpenMP, then without -march (a compiler that lacks it),
# then without OpenMP (Apple's clang): each still a correct kernel
_FLAG_SETS = (["-O3", "-march=native", "-fopenmp"], ["-O3", "-fopenmp"], ["-O3"])
_why_not: dict[str, str] = {}


def _cpu_id() -> str:
    """The CPU's model name and feature flags (Linux), else what platform knows."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        keep = [ln for ln in lines if ln.split(":")[0].strip() in ("model name", "flags", "Features", "CPU part")]
        return "\n".join(dict.fromkeys(keep))  # one copy per distinct line, not one per core
    except OSError:
        return platform.processor() + platform.machine()


def machine_key() -> str:
    """A short name for this CPU and the kernels torch may run on it: its model and feature flags, and the
    ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA that hold torch's and oneDNN's kernels below its best. Code compiled
    under one key can run wrong under another (train/trainer.py's keep_compiled_in_our_cache)."""
    overrides = [os.environ.get(name, "") for name in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")]
    return hashlib.sha256("\0".join([_cpu_id(), *overrides]).encode()).hexdigest()[:16]


def _compiler_version(cc: str) -> str:
    try:
        return subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


@lru_cache(maxsize=None)
def load(name: str) -> ctypes.CDLL | None:
    """layers/{name}.c built for this CPU and loaded, or None (see why_not(name))."""
    if os.environ.get("SCRATCHLLM_NO_NATIVE"):
        _why_not[name] = "SCRATCHLLM_NO_NATIVE is set"
        return None
    source = Path(__file__).with_name(f"{name}.c")
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        _why_not[name] = "no C compiler (cc, gcc or clang) on PATH"
        return None
    # the file and every other source beside it (a kernel may #include another): a change to any rebuilds
    code = source.read_bytes() + b"".join(p.read_bytes() for p in sorted(source.parent.glob("*.[ch]")) if p != source)
    version = _compiler_version(cc)
    folder = cache_dir() / "kernels"
    errors = []
    for flags in _FLAG_SETS:
        key = hashlib.sha256(b"\0".join([code, version.encode(), " ".join(flags).encode(), _cpu_id().encode()])).hexdigest()
        target = folder / f"{name}-{key[:16]}.so"
        if not target.exists():
            try:
                folder.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}-", suffix=".so")
                os.close(fd)
                done = subprocess.run([cc, *flags, "-shared", "-fPIC", str(source), "-o", tmp],
                                      capture_output=True, text=True, timeout=300)
                if done.returncode != 0:
                    os.unlink(tmp)
                    errors.append(f"{' '.join(flags)}: {done.stderr.strip().splitlines()[-1:] or done.returncode}")
                    continue
                os.replace(tmp, target)  # in place at once: never a half-written library under the final name
            except (OSError, subprocess.SubprocessError) as e:
                errors.append(f"{' '.join(flags)}: {e}")
                continue
        try:
            return ctypes.CDLL(str(target))
        except OSError as e:
            errors.append(f"loading {target}: {e}")
    _why_not[name] = f"{cc} could not build {source.name} ({'; '.join(errors)[:300]})"
    return None


def why_not(name: str) -> str | None:
    """Why load(name) returned None, or None if it did not."""
    return _why_not.get(name)
