"""Atomic output and provenance: a killed job never leaves a valid-looking file behind."""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ascsharp.core.progress import get_logger

if TYPE_CHECKING:
    import pandas as pd


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    The temporary name keeps the suffix so that libraries which dispatch on it (numpy, h5py)
    behave, and lives in the same folder so the final rename is atomic on POSIX. The file is
    fsynced before the rename and the folder after it, so that a crash of the machine cannot
    leave the new name on unwritten blocks. Temporaries of `path` left by a killed earlier
    run (SIGKILL, power loss: no cleanup ran) are removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent
    )
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; outputs should be shareable
    try:
        yield tmp_path
        _fsync(tmp_path)
        os.replace(tmp_path, path)
        _fsync(path.parent)
    finally:
        tmp_path.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    """Flush a file's (or a folder's entries') data to the disk; folders where the OS allows."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # e.g. a folder on a platform that cannot open one
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a folder: nothing more can be done
    finally:
        os.close(fd)


def _temporaries(path: Path, suffix: str) -> re.Pattern:
    # The names mkstemp/mkdtemp give with prefix ".{name}." (8 random characters).
    return re.compile(rf"\.{re.escape(path)}\.[a-z0-9_]{{8}}\.tmp{re.escape(suffix)}")


def remove_stale_temporaries(path: Path, folder: bool = False) -> None:
    """Delete what an earlier, killed writer of `path` left beside it: its temporary file
    (atomic_path) or folder (staging_dir). Only names made for this very output are touched;
    no other job writes the same output at the same time (Snakemake locks its outputs)."""
    if not path.parent.is_dir():
        return
    pattern = _temporaries(path.name, "") if folder else _temporaries(path.stem, path.suffix)
    for entry in path.parent.iterdir():
        if not pattern.fullmatch(entry.name):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


@contextlib.contextmanager
def staging_dir(root: Path) -> Iterator[Path]:
    """A hidden folder beside `root` to build a whole folder in (publish it with publish_dir);
    removed if the block fails, is interrupted (see handle_termination) or did not publish it.
    Stale staging folders of `root` from killed runs are removed first."""
    root.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(root, folder=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".tmp", dir=root.parent))
    try:
        yield tmp
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def publish_dir(tmp: Path, root: Path) -> None:
    """Move a finished folder built at `tmp` (beside `root`) into place in one rename.

    `root` may exist only as a folder without files (Snakemake makes the folders of a rule's
    declared outputs before the job); mkdtemp's private mode is relaxed to the umask.
    Everything written is flushed to disk first (one sync() rather than an fsync per file of
    a 17k-file data set), so the renamed folder never holds unwritten files after a crash.
    """
    os.chmod(tmp, 0o777 & ~_umask())
    os.sync()
    if root.is_dir():
        # rename() cannot replace a non-empty folder; rmdir() removes empty folders only.
        for folder in sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            folder.rmdir()
        root.rmdir()
    os.replace(tmp, root)
    _fsync(root.parent)


class Terminated(BaseException):
    """SIGTERM or SIGINT arrived. A BaseException, like KeyboardInterrupt, so that no
    `except Exception` swallows it: it unwinds every `finally` (temporaries removed) and
    ends the command with exit status 128 + the signal's number."""

    def __init__(self, signum: int):
        super().__init__(f"terminated by {signal.Signals(signum).name}")
        self.signum = signum


@contextlib.contextmanager
def handle_termination() -> Iterator[None]:
    """Within the block, SIGTERM (Slurm's time limit, scancel, Snakemake) and SIGINT (Ctrl-C)
    raise Terminated in the main thread, so that they run the same cleanup as an exception;
    the previous handlers come back after it (for callers that run a command in-process)."""

    def raise_terminated(signum: int, frame) -> None:
        raise Terminated(signum)

    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers; the process's own stay in force
        return
    previous = {s: signal.signal(s, raise_terminated) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _holds_files(root: Path) -> bool:
    return any(not p.is_dir() for p in root.rglob("*"))


def previous_marker(root: Path, marker: str, what: str) -> dict[str, Any] | None:
    """The marker JSON of a folder published earlier by ascsharp; None if `root` is absent or
    holds no files (only folders, as Snakemake makes for a rule's outputs). Any other content
    is refused, so that a generator never writes over a user's data."""
    if root.exists() and not root.is_dir():
        raise ValueError(f"{root}: exists and is not a folder")
    if not root.is_dir() or not _holds_files(root):
        return None
    try:
        return json.loads((root / marker).read_text())
    except (OSError, ValueError):
        raise ValueError(
            f"{root}: not empty and not a {what} made by ascsharp; refusing to write there"
        ) from None


def read_partial(path: Path, fingerprint: str, what: str, inputs: str) -> dict[str, Any]:
    """The finished units saved in a resumable job's partial file, if it belongs to these
    inputs (`fingerprint`); a file of other inputs is refused by name, never mixed in.

    Units holding a non-finite number are dropped (computed again): a value is only trusted
    from the file as it would be written, and a genuinely diverged unit costs one rerun.
    """
    fix = "delete it to start again"
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: unreadable partial {what} file ({one_line(e)}); {fix}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("done"), dict):
        raise ValueError(f"{path}: not a partial {what} file; {fix}")
    if obj.get("fingerprint") != fingerprint:
        raise ValueError(f"{path}: partial results belong to other {inputs}; {fix}")
    done = {k: v for k, v in obj["done"].items() if _all_finite(v)}
    dropped = len(obj["done"]) - len(done)
    if dropped:
        get_logger().warning("%s: %d saved unit(s) not finite; computing them again", path, dropped)
    return done


def _all_finite(value: Any) -> bool:
    if isinstance(value, dict):
        return all(_all_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(_all_finite(v) for v in value)
    if isinstance(value, float):
        return math.isfinite(value)
    return True


def write_partial(path: Path, fingerprint: str, done: dict[str, Any]) -> None:
    write_json(path, {"fingerprint": fingerprint, "done": done})


def one_line(e: BaseException) -> str:
    """An exception as one line (first line, whitespace collapsed), for one-line errors."""
    lines = [" ".join(line.split()) for line in str(e).splitlines() if line.strip()]
    return lines[0] if lines else type(e).__name__


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def write_table(path: str | Path, df) -> None:
    """Write a pandas DataFrame as TSV, atomically."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, sep="\t", index=False)


def _json_default(obj: Any) -> Any:
    # numpy scalars and paths turn up in metrics; everything else is a bug worth seeing.
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


_PACKAGES = ("ascsharp", "torch", "torchaudio", "numpy", "scipy", "pandas", "librosa", "h5py")


def provenance() -> dict[str, Any]:
    """Library versions, git commit and host: recorded in every artefact so it can be traced."""
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "host": platform.node(),
        "versions": versions,
        "git_commit": git_commit(),
    }


def git_commit() -> str | None:
    """The commit of the checkout the code runs from (with '-dirty' if modified), if any."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=40"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def require_columns(df: pd.DataFrame, columns: Sequence[str], where: str) -> None:
    for col in columns:
        if col not in df.columns:
            raise ValueError(f"{where}: missing column {col!r}")


def read_table(path: Path, columns: Sequence[str] = ()) -> pd.DataFrame:
    """A TSV written by the workflow, or a one-line error naming the file."""
    import pandas as pd

    try:
        table = pd.read_csv(path, sep="\t")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a readable TSV table ({e})") from None
    require_columns(table, columns, str(path))
    return table


def json_safe(obj: Any) -> Any:
    """Non-finite floats become None (strict JSON has no NaN/inf); the `finite` flags remain."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
