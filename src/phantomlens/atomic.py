"""Atomic file and directory writes, so a killed process never leaves a result that looks complete."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from phantomlens.errors import PhantomLensError


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results should read like any file
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write ``obj`` as strict JSON: a non-finite number (NaN, ±inf: "not defined") becomes null.

    Python's json writes the literals NaN and Infinity, which other JSON readers reject; phantomlens's
    typed readers read null in a number field back as NaN.
    """
    write_bytes_atomic(path, strict_json(obj).encode())


def strict_json(obj: Any) -> str:
    return json.dumps(_finite_or_null(obj), indent=2, allow_nan=False, default=_json_default) + "\n"


def _finite_or_null(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {key: _finite_or_null(value) for key, value in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite_or_null(value) for value in obj]
    if hasattr(obj, "item") and not isinstance(obj, str | bytes):  # numpy / torch scalars
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


@contextlib.contextmanager
def staged_directory(final: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a hidden sibling folder to fill; rename it to ``final`` only if the block succeeds.

    A crash or an exception inside the block removes the staging folder, so ``final`` is either
    absent, the previous complete result, or the new complete result, never a half-written one.
    """
    final = Path(final)
    check_output_dir(final, overwrite)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(final)
    # The owner's PID is in the name, so a later write can tell a killed writer's debris from a
    # live writer's folder.
    staging = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.partial-{os.getpid()}-"))
    try:
        yield staging
        os.chmod(staging, 0o777 & ~_umask())
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if final.exists():
        trash = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.old-{os.getpid()}-"))
        os.replace(final, trash / "old")
        os.replace(staging, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(staging, final)


def remove_stale_staging(final: Path) -> list[Path]:
    """Remove the hidden staging folders of ``final`` left by writers that no longer run.

    A ``kill -9`` between filling a staging folder and renaming it leaves ``.NAME.partial-PID-*``;
    the next write of the same result removes it (folders of a live PID are left alone).
    """
    removed = []
    for kind in ("partial", "old"):
        for path in Path(final).parent.glob(f".{Path(final).name}.{kind}-*"):
            pid = path.name.removeprefix(f".{Path(final).name}.{kind}-").split("-")[0]
            if path.is_dir() and (not pid.isdigit() or not _alive(int(pid))):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_json(path: Path, what: str, remedy: str = "") -> Any:
    """Parse a JSON file, or a one-line error naming what it was and what to do."""
    path = Path(path)
    if path.is_dir():
        raise PhantomLensError(f"{what} {path} is a directory; give the file itself")
    if not path.is_file():
        raise PhantomLensError(f"{what} {path} does not exist" + (f"; {remedy}" if remedy else ""))
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise PhantomLensError(f"{what} {path} is not valid JSON ({exc})") from None
    except RecursionError:  # arrays nested thousands deep: no result file of ours is
        raise PhantomLensError(f"{what} {path} is nested too deeply to be a phantomlens file") from None


def check_output_dir(final: Path, overwrite: bool = False) -> None:
    """Fail now, in one line, if ``final`` could not be written as a result directory later.

    Called before any training, so a run never spends its time only to find its output unwritable.
    """
    from phantomlens.errors import PhantomLensError

    final = Path(final)
    if final.exists() and not final.is_dir():
        raise PhantomLensError(
            f"output {final} exists and is a file, not a directory; choose another output (out)"
        )
    if final.is_dir() and not overwrite and any(final.iterdir()):
        raise PhantomLensError(
            f"output directory {final} already exists and is not empty; "
            "choose another output (out) or pass --overwrite"
        )
    _check_parent_writable(final)


def check_output_file(path: Path) -> None:
    """Fail now, in one line, if a result file could not be written at ``path`` later."""
    path = Path(path)
    if path.is_dir():
        raise PhantomLensError(f"output {path} is a directory; give a file name")
    if path.exists() and not os.access(path, os.W_OK):
        raise PhantomLensError(f"cannot overwrite {path} (permission denied); choose another output (out)")
    _check_parent_writable(path)


def _check_parent_writable(path: Path) -> None:
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise PhantomLensError(
            f"output {path} lies under {parent}, which is a file; choose another output (out)"
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PhantomLensError(
            f"cannot write under {parent} (permission denied); choose another output (out)"
        )
    try:  # access() says yes to root everywhere, and /proc or a read-only mount still refuse
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as exc:
        raise PhantomLensError(
            f"cannot write under {parent} ({exc.strerror or type(exc).__name__}); choose another output (out)"
        ) from None


def check_not_an_input(output: Path, inputs: list[Path]) -> None:
    """Refuse an output that would overwrite one of the command's own inputs (a fact file, a file
    inside a run or sweep directory being read)."""
    target = Path(output).resolve()
    for given in inputs:
        source = Path(given).resolve()
        if target == source or (source.is_dir() and source in target.parents):
            raise PhantomLensError(
                f"output {output} would overwrite the input {given}; choose another output"
            )
