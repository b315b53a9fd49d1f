"""Writing files so that a crash never leaves half a file where a good one was.

Every file the project writes goes through here: it is written under a temporary name in the same
folder, flushed to disk, then renamed over the target (a rename within one filesystem is atomic).
A folder (a checkpoint, a prepared corpus) is written the same way, whole, then swapped in.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Callable, Iterator


# What reading a JSON file can raise: OSError (missing, a folder, unreadable), ValueError (not UTF-8,
# not JSON, an integer of more than 4,300 digits) and RecursionError (arrays nested deeper than the
# parser's stack). A reader catches all three and turns them into its own one-line error.
JSON_ERRORS = (OSError, ValueError, RecursionError)


def save_safetensors(save_file: Callable, tensors: dict, path: str | Path, metadata: dict | None = None) -> None:
    """`save_file(tensors, path, metadata=...)` (safetensors'), its write errors raised as the OSError they
    are: safetensors reports a full disk as "SafetensorError: Error while serializing: I/O error: No space
    left on device (os error 28)", which the CLI would show as a traceback; as OSError(ENOSPC) it is the
    one line every other full-disk error is (and the writer's temporary folder is removed as for those)."""
    import re

    from safetensors import SafetensorError

    try:
        save_file(tensors, str(path), metadata=metadata)
    except SafetensorError as e:
        code = re.search(r"\(os error (\d+)\)", str(e))
        if code is None:
            raise
        raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(path)) from None


def _fsync(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block succeeds, the file written there
    replaces `path`. When it fails, the temporary file is removed and `path` is left as it was."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write(path: str | Path, data: str | bytes) -> None:
    """Write text (UTF-8) or bytes to `path` atomically."""
    with atomic_path(path) as tmp:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)


def _written_beside(final: Path, write: Callable[[Path], None]) -> Path:
    """A fresh temporary folder beside `final` (`.NAME.tmp-PID`) holding what `write(tmp)` wrote, on
    disk (fsynced); removed again if writing fails."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        write(tmp)
        for f in tmp.iterdir():
            if f.is_file():
                _fsync(f)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp


def write_folder_atomically(final: str | Path, write: Callable[[Path], None]) -> None:
    """Run `write(tmp)` into a fresh temporary folder, then swap it in for `final`.

    The swap is two renames (final -> .old, tmp -> final); a reader that finds no `final` takes
    `.old` (see `checkpoint.resolve_checkpoint`), so some complete folder always exists."""
    final = Path(final)
    tmp = _written_beside(final, write)
    old = final.with_name(f".{final.name}.old")
    try:
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.rename(final, old)
        os.rename(tmp, final)
    except BaseException:  # a rename refused (read-only, I/O error) or interrupted: undo, leave no temporary
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not final.exists():
            with contextlib.suppress(OSError):
                os.rename(old, final)
        raise
    shutil.rmtree(old, ignore_errors=True)


# -- folders a command writes for the user ------------------------------------------------------------

def check_output(out: str | Path, inputs: tuple[str | Path, ...] = (), force: bool = False, kind: str = "folder",
                 force_flag: bool = True) -> Path:
    """Refuse, in one line, an output that would lose something: a file where a folder is to be
    written (or a folder where a file is), a place inside (or holding) one of the command's inputs,
    or, without `force`, a non-empty folder or an existing file."""
    from scratchllm.errors import ScratchLLMError

    out = Path(out)
    target = out.resolve()
    for source in inputs:
        src = Path(source).resolve()
        if target == src or src in target.parents or target in src.parents:
            raise ScratchLLMError(f"{out} is (or holds, or is inside) this command's input {source}; write somewhere else")
    if kind == "folder":
        if out.exists() and not out.is_dir():
            raise ScratchLLMError(f"{out} is a file, not a folder; choose a folder to write into")
        if out.is_dir() and any(out.iterdir()) and not force:
            raise ScratchLLMError(f"{out} is not empty; choose a new folder" + (", or pass --force to replace only the files "
                                  "this command writes (others are kept)" if force_flag else
                                  f" (e.g. --out {unused_name(out)}): a run never writes among files it did not make"))
    else:
        if out.is_dir():
            raise ScratchLLMError(f"{out} is a folder; give a file name to write")
        if out.exists() and not force:
            raise ScratchLLMError(f"{out} exists; choose another name, or pass --force to replace it")
    return out


def unused_name(path: str | Path) -> Path:
    """`path` with the first of -2, -3, ... appended that names nothing yet: a folder to suggest instead."""
    path = Path(path)
    n = 2
    while path.with_name(f"{path.name}-{n}").exists():
        n += 1
    return path.with_name(f"{path.name}-{n}")


def write_output_folder(out: str | Path, write: Callable[[Path], None]) -> Path:
    """Write a folder for the user (after `check_output`): the files are written into a temporary
    folder beside it, then each is renamed into `out`; files of `out` that this command did not
    write are left alone. A folder that did not exist appears whole, in one rename."""
    out = Path(out)
    tmp = _written_beside(out, write)
    try:
        if not out.exists():
            os.rename(tmp, out)
            return out
        for f in tmp.iterdir():
            os.replace(f, out / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Temporary files and folders (`.NAME.tmp-PID`) that a killed writer left in `folder`: removed
    when no live process has that PID. Returns what was removed."""
    removed = []
    for p in Path(folder).glob(".*.tmp-*"):
        pid = p.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class FolderLock:
    """An exclusive lock on a folder (`.lock` inside it, flock), held while a run writes there; a
    second holder gets a one-line error naming the first. The kernel drops it when the process dies."""

    def __init__(self, folder: str | Path):
        self.path = Path(folder) / ".lock"
        self._fh = None

    def __enter__(self) -> "FolderLock":
        import fcntl

        from scratchllm.errors import ScratchLLMError

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise ScratchLLMError(f"{self.path.parent} is in use by {holder}; wait for it to finish or choose another --out") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"process {os.getpid()}\n")
        fh.flush()
        self._fh = fh
        return self

    def __exit__(self, *exc) -> None:
        if self._fh is not None:
            self._fh.close()  # closing releases the lock
            self._fh = None
