"""Download path against a fake Zenodo record served on 127.0.0.1 (no internet needed).

The record mimics 3819968: audio split over two zips plus a meta zip, every zip holding the
single top folder `TAU-urban-acoustic-scenes-2020-mobile-development/`. MD5s are computed here
with hashlib, and the unpacked set is compared byte for byte with the files that were zipped.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import threading
import zipfile
from pathlib import Path

import pytest
from fake_zenodo import FakeZenodo

from ascsharp import cli
from ascsharp.data.download import download_dataset, download_file, fetch_record
from ascsharp.data.meta import DOWNLOAD_MARKER as MARKER
from ascsharp.data.meta import SYNTHETIC_MARKER as SYNTH_MARKER
from ascsharp.data.meta import validate_dataset
from ascsharp.data.synth import generate_dataset

TOP = "TAU-urban-acoustic-scenes-2020-mobile-development"
NAME = TOP + ".{}.zip"


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> tuple[Path, dict[str, bytes]]:
    """A tiny DCASE-layout set and its zips as in the real record: {zip name: bytes}."""
    root = tmp_path_factory.mktemp("source") / "set"
    generate_dataset(
        root,
        seed=1,
        audio_sample_rate=8000,
        clip_seconds=0.25,
        cities=2,
        locations_per_city=2,
        segments_per_location=1,
    )
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    files.remove(SYNTH_MARKER)
    audio = [f for f in files if f.startswith("audio/")]
    half = len(audio) // 2
    groups = {
        NAME.format("audio.1"): audio[:half],
        NAME.format("audio.2"): audio[half:],
        NAME.format("meta"): [f for f in files if not f.startswith("audio/")],
    }
    zips = {}
    for name, members in groups.items():
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr(TOP + "/", b"")  # the real zips carry directory entries too
            for rel in members:
                z.write(root / rel, f"{TOP}/{rel}")
        zips[name] = buf.getvalue()
    return root, zips


@pytest.fixture
def server(source):
    srv = FakeZenodo(source[1])
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def tree(root: Path, skip: set[str]) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and p.name not in skip
    }


def assert_same_set(root: Path, source_root: Path) -> None:
    validate_dataset(root, audio_sample_rate=8000, clip_seconds=0.25)
    got = tree(root, {MARKER})
    expected = tree(source_root, {SYNTH_MARKER})
    assert sorted(got) == sorted(expected)
    assert got == expected


@pytest.mark.parametrize("legacy", [False, True])
def test_record_downloads_and_unpacks_to_the_source_set(server, source, tmp_path, legacy):
    server.legacy = legacy
    entries = fetch_record(server.api)
    assert {e.key: (e.size, e.md5) for e in entries} == {
        k: (len(v), server.md5[k]) for k, v in source[1].items()
    }
    root = tmp_path / "data" / "tau"
    download_dataset(server.api, tmp_path / "downloads", root)
    assert_same_set(root, source[0])
    for key, data in source[1].items():  # the zips are kept for a rerun
        assert (tmp_path / "downloads" / key).read_bytes() == data
    assert json.loads((root / MARKER).read_text())["api"] == server.api
    assert sorted(p.name for p in root.parent.iterdir()) == ["tau"]  # no temp folder left


def test_rerun_fetches_nothing_again(server, source, tmp_path):
    root = tmp_path / "tau"
    download_dataset(server.api, tmp_path / "downloads", root)
    assert len(server.file_gets()) == len(source[1])
    # Same root: already complete. New root: zips reused from downloads/, only unpacked again.
    download_dataset(server.api, tmp_path / "downloads", root)
    download_dataset(server.api, tmp_path / "downloads", tmp_path / "again")
    assert len(server.file_gets()) == len(source[1])
    assert_same_set(tmp_path / "again", source[0])


def test_md5_mismatch_is_refused_and_the_file_removed(server, tmp_path):
    bad = NAME.format("audio.2")
    right = server.md5[bad]
    server.md5[bad] = "0" * 32
    root = tmp_path / "tau"
    with pytest.raises(ValueError, match=re.escape(bad)) as err:
        download_dataset(server.api, tmp_path / "downloads", root)
    assert right in str(err.value) and "0" * 32 in str(err.value)
    assert not (tmp_path / "downloads" / bad).exists()
    assert not (tmp_path / "downloads" / (bad + ".part")).exists()
    assert not root.exists()


def test_dropped_connection_is_resumed_with_range(server, source, tmp_path):
    key = NAME.format("audio.1")
    cut = len(source[1][key]) // 2
    server.cut_once[key] = cut
    root = tmp_path / "tau"
    download_dataset(server.api, tmp_path / "downloads", root)
    assert [r for p, r in server.file_gets() if p.endswith(key)] == [None, f"bytes={cut}-"]
    assert_same_set(root, source[0])


def test_part_file_is_resumed_or_restarted_when_range_is_ignored(server, source, tmp_path):
    key = NAME.format("meta")
    data = source[1][key]
    url = f"http://127.0.0.1:{server.server_address[1]}/files/{key}"
    dest = tmp_path / key
    for ignore_range in (False, True):
        server.ignore_range = ignore_range
        # A stale tail in the .part proves the 200 reply rewrote it from byte 0.
        dest.with_name(key + ".part").write_bytes(data[:100] + (b"x" * 50 if ignore_range else b""))
        download_file(url, dest, len(data), server.md5[key])
        assert dest.read_bytes() == data
        assert server.requests[-1][1] == ("bytes=150-" if ignore_range else "bytes=100-")
        dest.unlink()


def test_zip_path_traversal_is_refused(server, tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(f"{TOP}/../evil", b"owned")
    key = NAME.format("doc")
    server.files[key] = buf.getvalue()
    server.md5[key] = hashlib.md5(buf.getvalue()).hexdigest()
    root = tmp_path / "data" / "tau"
    with pytest.raises(ValueError, match=re.escape(key)):
        download_dataset(server.api, tmp_path / "downloads", root)
    assert not root.exists()
    assert not any(p.name == "evil" for p in tmp_path.rglob("*"))


def test_foreign_root_is_refused_before_downloading(server, tmp_path, capsys):
    root = tmp_path / "tau"
    root.mkdir()
    (root / "notes.txt").write_text("mine")
    argv = ["download", "--api", server.api, "--downloads", str(tmp_path / "dl"), "--root"]
    with pytest.raises(SystemExit) as exit_:
        cli.main([*argv, str(root)])
    assert exit_.value.code == 2
    assert "not a download made by ascsharp" in capsys.readouterr().err
    assert server.file_gets() == []
    assert (root / "notes.txt").read_text() == "mine"
