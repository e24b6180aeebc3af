"""Download and unpack TAU Urban Acoustic Scenes 2020 Mobile (development) from Zenodo.

The real set is 16 zips of about 1 GB each (Zenodo record 3819968), so every step must survive
being killed: files are fetched to `<name>.part` and resumed with HTTP Range requests, each is
checked against the record's MD5 before it gets its final name, the zips are kept so a rerun
skips them, and the data set is unpacked beside `root` and renamed into place only after
`meta.validate_dataset` accepted it. Standard library only (urllib), no extra dependency.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath

from ascsharp.core.io import one_line, previous_marker, publish_dir, staging_dir
from ascsharp.core.progress import Progress, get_logger
from ascsharp.data.meta import DOWNLOAD_MARKER, validate_dataset

USER_AGENT = "ascsharp-download (urllib)"
TIMEOUT_S = 60
MIB = 1 << 20


@dataclass(frozen=True)
class FileEntry:
    """One file of a Zenodo record: what to fetch and how to check it."""

    key: str
    size: int
    md5: str
    url: str


def fetch_record(api_url: str) -> list[FileEntry]:
    """The files of a Zenodo record, from its REST API JSON (current or legacy layout).

    Current: `files: [{key, size, checksum: "md5:<hex>", links: {self}}]`; legacy (before the
    2023 migration): `files: [{filename, filesize, checksum, links: {download}}]`.
    """
    if urllib.parse.urlsplit(api_url).scheme not in ("https", "http"):
        raise ValueError(f"{api_url}: not an https:// record URL (dataset.download.api)")
    request = urllib.request.Request(
        api_url, headers={"Accept": "application/json", "User-Agent": USER_AGENT}
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            record = json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as e:
        raise ValueError(f"{api_url}: HTTP {e.code} {e.reason}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{api_url}: not a JSON record ({e.msg})") from None
    files = record.get("files") if isinstance(record, dict) else None
    if isinstance(files, dict):  # some API versions wrap the list as {"entries": [...]}
        files = files.get("entries")
        files = list(files.values()) if isinstance(files, dict) else files
    if not isinstance(files, list) or not files:
        raise ValueError(f"{api_url}: record lists no files")
    return [_entry(api_url, f) for f in files]


def _entry(api_url: str, f: dict) -> FileEntry:
    key = f.get("key") or f.get("filename")
    size = f.get("size", f.get("filesize"))
    checksum = str(f.get("checksum", ""))
    links = f.get("links") or {}
    url = links.get("self") or links.get("download") or links.get("content")
    algo, _, digest = checksum.rpartition(":")
    if not key or not isinstance(size, int) or not url:
        raise ValueError(f"{api_url}: file entry without key, size or link: {f!r}")
    if algo not in ("", "md5") or len(digest) != 32:
        raise ValueError(f"{api_url}: {key}: no MD5 checksum (got {checksum!r})")
    if PurePosixPath(key).name != key or key in (".", ".."):
        raise ValueError(f"{api_url}: unsafe file name {key!r}")
    # A record may not send us elsewhere than the web (file://, ftp://...) nor downgrade to
    # plain http: https only, unless the API itself was given as http (a local mirror).
    allowed = {"https", urllib.parse.urlsplit(api_url).scheme}
    if urllib.parse.urlsplit(str(url)).scheme not in allowed:
        raise ValueError(f"{api_url}: {key}: link {url!r} is not https; refusing to follow it")
    return FileEntry(key=key, size=size, md5=digest.lower(), url=url)


def md5_of(path: Path, chunk: int = 8 * MIB) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def download_file(
    url: str,
    dest: str | Path,
    size: int,
    md5: str,
    *,
    chunk: int = MIB,
    retries: int = 5,
    log: logging.Logger | None = None,
) -> None:
    """Fetch `url` to `dest`, resuming `dest.part`, and give it its name only once MD5 matches.

    A dropped connection is retried from where it stopped (Range request); a server that
    ignores Range (200 instead of 206) makes it start again from 0. Every failed attempt,
    a server that sends more bytes than the record's size included, counts against `retries`,
    so the download always ends. A complete file of the wrong checksum is deleted and
    reported, since downloading it again would give the same.
    """
    dest = Path(dest)
    log = log or get_logger()
    md5 = md5.lower()
    if dest.is_file():
        if md5_of(dest) == md5:
            log.info("%s: present, MD5 ok", dest.name)
            return
        log.warning("%s: present with another MD5; downloading again", dest.name)
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    attempt = 0
    while True:
        have = part.stat().st_size if part.exists() else 0
        if have > size:
            part.unlink()
            attempt += 1
            if attempt > retries:
                raise OSError(
                    f"{dest.name}: the server sent {have} bytes, the record says {size} "
                    f"({retries} retries); the record or {url} is wrong, {part} deleted"
                )
            log.warning("%s: %d bytes, more than the expected %d; restarting", part, have, size)
            continue
        if have == size:
            break
        try:
            _fetch_into(url, part, have, size, chunk, log)
        except (OSError, http.client.HTTPException) as e:
            if isinstance(e, urllib.error.HTTPError) and e.code < 500 and e.code != 416:
                raise OSError(f"{url}: HTTP {e.code} {e.reason}") from None
            attempt += 1
            now = part.stat().st_size if part.exists() else 0
            if attempt > retries:
                raise OSError(
                    f"{dest.name}: download failed after {retries} retries ({e}); "
                    f"{now} of {size} bytes kept in {part} for the next run"
                ) from None
            log.warning("%s: interrupted at %d/%d bytes (%s); resuming", dest.name, now, size, e)
            if now <= have:  # no progress: give the server a moment before trying again
                time.sleep(min(2**attempt, 30))
    actual = md5_of(part)
    if actual != md5:
        part.unlink()
        raise ValueError(f"{dest.name}: MD5 {actual} does not match the record's {md5}; deleted")
    os.replace(part, dest)
    log.info("%s: %d bytes, MD5 ok", dest.name, size)


def _fetch_into(url: str, part: Path, have: int, size: int, chunk: int, log: logging.Logger):
    """One HTTP request appending to `part` from byte `have` (or rewriting it from 0)."""
    headers = {"User-Agent": USER_AGENT}
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as e:
        if e.code == 416:  # our .part does not fit the file any more: start afresh
            part.unlink(missing_ok=True)
        raise
    with response:
        start = _range_start(response.headers.get("Content-Range")) if response.status == 206 else 0
        if start not in (have, 0):
            raise OSError(f"{url}: asked for bytes from {have}, got them from {start}")
        if start != have:  # 200: the server ignored Range and sends the whole file
            log.info("%s: server ignored the Range request; restarting from 0", part.name)
            have = 0
        progress = Progress(max(1, -(-size // MIB)), "MiB", log, done=have // MIB)
        step = max(64 * MIB, size // 20)  # about 20 log lines per file
        reported = have
        with open(part, "ab" if have else "wb") as f:
            while block := response.read(chunk):
                f.write(block)
                have += len(block)
                if have - reported >= step:
                    progress.update((have - reported) // MIB, part.name)
                    reported += (have - reported) // MIB * MIB
        if have < size:
            raise http.client.IncompleteRead(b"", size - have)


def _range_start(content_range: str | None) -> int:
    """First byte of `Content-Range: bytes <start>-<end>/<total>`."""
    try:
        unit, spec = (content_range or "").split(" ", 1)
        if unit != "bytes":
            raise ValueError
        return int(spec.split("-", 1)[0])
    except ValueError:
        raise OSError(f"unreadable Content-Range {content_range!r}") from None


def download_dataset(
    api_url: str,
    downloads_dir: str | Path,
    root: str | Path,
    *,
    log: logging.Logger | None = None,
) -> None:
    """Download every file of the record into `downloads_dir` and unpack the zips into `root`.

    Each zip holds one top folder (`TAU-urban-acoustic-scenes-2020-mobile-development/`);
    their contents are merged so that `root` itself has `audio/`, `meta.csv` and
    `evaluation_setup/`. A complete earlier download of the same record is kept as it is; any
    other non-empty `root` is refused.
    """
    log = log or get_logger()
    downloads_dir, root = Path(downloads_dir), Path(root)
    entries = fetch_record(api_url)
    # Identified by name, size and MD5 only: download links may change, the content not.
    files = [{k: v for k, v in asdict(e).items() if k != "url"} for e in entries]
    marker = {"api": api_url, "files": files}
    if _previous_download(root, marker):
        log.info("%s: download of %s already complete", root, api_url)
        return

    total = sum(e.size for e in entries)
    log.info("%s: %d files, %.1f GiB", api_url, len(entries), total / (1 << 30))
    progress = Progress(len(entries), "files", log)
    for e in entries:
        download_file(e.url, downloads_dir / e.key, e.size, e.md5, log=log)
        progress.update(1, e.key)

    with staging_dir(root) as tmp:
        zips = [downloads_dir / e.key for e in entries if e.key.endswith(".zip")]
        unpacking = Progress(len(zips), "zips", log)
        for z in zips:
            _unpack(z, tmp)
            unpacking.update(1, z.name)
        # A broken download never becomes `root`. Rate and length are the features job's check.
        folds = validate_dataset(tmp, audio_sample_rate=None, clip_seconds=None)
        log.info(
            "%s: train %d, evaluate %d clips", root, len(folds["train"]), len(folds["evaluate"])
        )
        (tmp / DOWNLOAD_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        publish_dir(tmp, root)


def _previous_download(root: Path, marker: dict) -> bool:
    """True if `root` holds a complete download of this record; False if absent or empty."""
    stored = previous_marker(root, DOWNLOAD_MARKER, "download")
    if stored is not None and stored.get("files") != marker["files"]:
        raise ValueError(
            f"{root}: holds a download of other files ({root / DOWNLOAD_MARKER}); delete it"
        )
    return stored is not None


def _unpack(zip_path: Path, dest: Path) -> None:
    """Extract `zip_path` into `dest`, dropping its single top folder if it has one.

    Every failure names the zip: a damaged member (bad CRC, truncated data) asks for the zip to
    be deleted and downloaded again; a member name that clashes with another is refused.
    """
    try:
        archive = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile as e:
        raise ValueError(
            f"{zip_path}: not a zip file ({e}); delete it to download it again"
        ) from None
    with archive:
        members = archive.infolist()
        parts = []
        for m in members:
            p = PurePosixPath(m.filename.replace("\\", "/"))
            if p.is_absolute() or ".." in p.parts or ":" in (p.parts[0] if p.parts else ""):
                raise ValueError(f"{zip_path}: unsafe member path {m.filename!r}")
            parts.append(p.parts)
        tops = {ps[0] for ps in parts if ps}
        strip = len(tops) == 1 and all(
            len(ps) > 1 or m.is_dir() for m, ps in zip(members, parts, strict=True)
        )
        seen: set[tuple[str, ...]] = set()
        for m, ps in zip(members, parts, strict=True):
            rel = ps[1:] if strip else ps
            if not rel:
                continue
            if not m.is_dir() and rel in seen:
                raise ValueError(f"{zip_path}: member {m.filename!r} appears twice; refusing it")
            seen.add(rel)
            target = dest.joinpath(*rel)
            try:
                if m.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(m) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, MIB)
            except (zipfile.BadZipFile, zlib.error, EOFError) as e:
                raise ValueError(
                    f"{zip_path}: member {m.filename!r} is damaged ({one_line(e)}); "
                    "delete the zip to download it again"
                ) from None
            except (IsADirectoryError, NotADirectoryError, FileExistsError) as e:
                raise ValueError(
                    f"{zip_path}: member {m.filename!r} clashes with another file of the data "
                    f"set ({e.strerror}); the zip does not fit this record"
                ) from None
