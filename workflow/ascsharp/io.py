"""Atomic output and provenance: a killed job never leaves a valid-looking file behind."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    The temporary name keeps the suffix so that libraries which dispatch on it (numpy, h5py)
    behave, and lives in the same folder so the final rename is atomic on POSIX.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent
    )
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; outputs should be shareable
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def publish_dir(tmp: Path, root: Path) -> None:
    """Move a finished folder built at `tmp` (beside `root`) into place in one rename.

    `root` may exist only as a folder without files (Snakemake makes the folders of a rule's
    declared outputs before the job); mkdtemp's private mode is relaxed to the umask.
    """
    os.chmod(tmp, 0o777 & ~_umask())
    if root.is_dir():
        # rename() cannot replace a non-empty folder; rmdir() removes empty folders only.
        for folder in sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            folder.rmdir()
        root.rmdir()
    os.replace(tmp, root)


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
    inputs (`fingerprint`); a file of other inputs is refused by name, never mixed in."""
    try:
        obj = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: unreadable partial {what} file ({e})") from None
    if not isinstance(obj, dict) or obj.get("fingerprint") != fingerprint:
        raise ValueError(
            f"{path}: partial results belong to other {inputs}; delete it to start again"
        )
    return dict(obj["done"])


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
