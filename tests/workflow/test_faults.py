"""Faults a cluster run meets: killed jobs, signals, bad files and bad values (docs/faults.md).

The three headline cases (a resume on other data, a download that never ends, debris left by
SIGTERM) each failed on the code before the fix; the signal tests send a real SIGTERM to a
running `ascsharp` process and look for what it left behind.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import yaml
from conftest import write_feature_store
from defaults import mel_config, train_files, train_settings

import ascsharp.train.loop as train_module
from ascsharp import cli
from ascsharp.core.config import ConfigError, validate_config
from ascsharp.core.io import atomic_path, read_partial, write_partial
from ascsharp.core.surface import Grid, gather, read_surface, write_shard
from ascsharp.data import download
from ascsharp.data.meta import DatasetError, validate_dataset
from ascsharp.data.synth import generate_dataset
from ascsharp.features.mel import extract_store, load_audio
from ascsharp.train.loop import RESUME_FILE, train

ROOT = Path(__file__).resolve().parents[2]
RUN = "arch~cnn10/optimizer~adam/lr~0.001/batch_size~16/seed~42"
SMALL = dict(audio_sample_rate=8000, clip_seconds=0.5, cities=2, locations_per_city=2,
             segments_per_location=1)  # fmt: skip


# --- training resume ---------------------------------------------------------------------------
def _killed_after_epoch_1(features: Path, out: Path, settings, monkeypatch) -> None:
    """What `kill -9` during epoch 2 leaves: the epoch-1 checkpoint and no outputs."""
    real = train_module._train_epoch

    def die_in_epoch_2(job, epoch, *args):
        if epoch == 2:
            raise KeyboardInterrupt  # stands for SIGKILL: nothing after this point runs
        return real(job, epoch, *args)

    monkeypatch.setattr(train_module, "_train_epoch", die_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train(train_files(features, out), RUN, settings, {"n_mels": 16})
    monkeypatch.undo()
    assert (out / RESUME_FILE).exists() and not (out / "model.pt").exists()


def _trained_epochs(monkeypatch) -> list[int]:
    """Record which epochs the next train() call runs (a resume skips the finished ones)."""
    seen: list[int] = []
    real = train_module._train_epoch

    def record(job, epoch, *args):
        seen.append(epoch)
        return real(job, epoch, *args)

    monkeypatch.setattr(train_module, "_train_epoch", record)
    return seen


HISTORY = ["train_loss", "train_accuracy", "select_loss", "select_accuracy"]


@pytest.mark.parametrize("change", ["store values", "hold-out", "feature settings"])
def test_killed_training_never_resumes_on_other_inputs(tmp_path, monkeypatch, change):
    """Headline case 1: before the fix, store B's rerun logged 'resuming after epoch 1' and
    its history began with store A's epoch."""
    settings = train_settings(epochs=2, width=0.25, eval_batch_size=32)
    a = write_feature_store(tmp_path / "a", seed=0)
    b = write_feature_store(tmp_path / "b", seed=0 if change != "store values" else 1)
    if change == "hold-out":  # same stores, one more location held out
        table = pd.read_csv(b / "train.tsv", sep="\t")
        held = table[table["location"].str.endswith(("-0", "-1"))]
        held[["filename", "scene", "location", "device"]].to_csv(
            b / "validation.tsv", sep="\t", index=False
        )
    mel = {"n_mels": 16, "hop_length": 320 if change == "feature settings" else 160}
    out = tmp_path / "out"
    _killed_after_epoch_1(a, out, settings, monkeypatch)

    epochs = _trained_epochs(monkeypatch)
    train(train_files(b, out), RUN, settings, mel)
    assert epochs == [1, 2]  # the checkpoint was discarded, not resumed
    assert not (out / RESUME_FILE).exists()
    monkeypatch.undo()
    train(train_files(b, tmp_path / "clean"), RUN, settings, mel)
    got = pd.read_csv(out / "history.tsv", sep="\t")[HISTORY]
    clean = pd.read_csv(tmp_path / "clean" / "history.tsv", sep="\t")[HISTORY]
    pd.testing.assert_frame_equal(got, clean)


def test_killed_training_resumes_on_the_same_inputs(tmp_path, monkeypatch):
    """The control: same data, settings and run resume after epoch 1 (also with more epochs
    asked for, which the checkpoint does not depend on)."""
    settings = train_settings(epochs=2, width=0.25, eval_batch_size=32)
    a = write_feature_store(tmp_path / "a", seed=0)
    _killed_after_epoch_1(a, tmp_path / "out", settings, monkeypatch)
    epochs = _trained_epochs(monkeypatch)
    train(train_files(a, tmp_path / "out"), RUN, replace(settings, epochs=3), {"n_mels": 16})
    assert epochs == [2, 3]


# --- download ---------------------------------------------------------------------------------
def test_download_ends_when_the_server_sends_more_than_the_record_size(tmp_path):
    """Headline case 2: before the fix this re-downloaded without end (here the fake server
    stops after 50 replies, which turned the endless loop into an HTTP 404)."""
    from fake_zenodo import FakeZenodo

    body = b"x" * 1000
    srv = FakeZenodo({"a.zip": body + b"extra bytes"})
    srv.give_up_after = 50
    with _serving(srv):
        url = f"http://127.0.0.1:{srv.server_address[1]}/files/a.zip"
        with pytest.raises(
            OSError, match=r"a\.zip: the server sent 1011 bytes, the record says 1000"
        ):
            download.download_file(url, tmp_path / "a.zip", 1000, hashlib.md5(body).hexdigest(),
                                   retries=3)  # fmt: skip
        assert len(srv.file_gets()) == 4  # the first try and 3 retries
    assert list(tmp_path.iterdir()) == []  # neither the file nor its .part kept


class _serving:
    def __init__(self, srv):
        import threading

        self.srv = srv
        self.thread = threading.Thread(target=srv.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self.srv

    def __exit__(self, *exc):
        self.srv.shutdown()
        self.srv.server_close()


@pytest.mark.parametrize(
    ("api", "link", "needle"),
    [
        ("https://zenodo.org/api/records/1", "file:///etc/passwd", "not https"),
        ("https://zenodo.org/api/records/1", "http://zenodo.org/a.zip", "not https"),
        ("https://zenodo.org/api/records/1", "ftp://zenodo.org/a.zip", "not https"),
    ],
)
def test_record_links_must_be_https(api, link, needle):
    entry = {"key": "a.zip", "size": 3, "checksum": "md5:" + "0" * 32, "links": {"self": link}}
    with pytest.raises(ValueError, match=needle) as err:
        download._entry(api, entry)
    assert "a.zip" in str(err.value) and link in str(err.value)
    assert download._entry(api, {**entry, "links": {"self": "https://zenodo.org/a.zip"}})


def test_record_url_must_be_web(tmp_path):
    record = tmp_path / "record.json"
    record.write_text("{}")
    with pytest.raises(ValueError, match="not an https:// record URL"):
        download.fetch_record(record.as_uri())


def _zip(members: dict[str, bytes], stored: bool = False) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def test_zip_member_with_bad_crc_is_one_line_naming_the_zip(tmp_path):
    data = _zip({"top/meta.csv": b"filename\tscene_label\n" * 20}, stored=True)
    bad = data.replace(b"scene_label\nfilename", b"scene_label\nfilenamE", 1)  # CRC now wrong
    (tmp_path / "d.zip").write_bytes(bad)
    with pytest.raises(ValueError) as err:
        download._unpack(tmp_path / "d.zip", tmp_path / "out")
    message = str(err.value)
    assert "d.zip" in message and "top/meta.csv" in message and "delete the zip" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "members",
    [
        {"top/audio": b"a file", "top/audio/x.wav": b"a clip"},  # file, then folder of that name
        {"top/audio/x.wav": b"a clip", "top/audio": b"a file"},  # folder, then file
    ],
)
def test_zip_name_clash_names_the_zip(tmp_path, members):
    (tmp_path / "d.zip").write_bytes(_zip(members))
    with pytest.raises(ValueError, match=r"d\.zip: member 'top/audio.*' clashes"):
        download._unpack(tmp_path / "d.zip", tmp_path / "out")


def test_zip_with_a_member_twice_is_refused(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z, pytest.warns(UserWarning, match="Duplicate name"):
        z.writestr("top/meta.csv", b"one")
        z.writestr("top/meta.csv", b"two")
    (tmp_path / "d.zip").write_bytes(buf.getvalue())
    with pytest.raises(ValueError, match=r"d\.zip: member 'top/meta.csv' appears twice"):
        download._unpack(tmp_path / "d.zip", tmp_path / "out")


# --- signals: a real SIGTERM to a running `ascsharp` -------------------------------------------
# Each command runs in a child process with one function wrapped: the wrapper says "ready" (a
# file) and then waits until the temporaries it was given are gone, which only the command's own
# cleanup can do. So the signal always lands mid-command, and nothing is timed.
HOOK = """
import sys, time
from pathlib import Path
import importlib
module, name, folder, pattern, ready = sys.argv[1:6]
mod = importlib.import_module(module)
real = getattr(mod, name)
calls = []

def wrapped(*args, **kwargs):
    calls.append(1)
    if len(calls) == 2 or name != "load_audio":
        Path(ready).touch()
        while list(Path(folder).glob(pattern)):
            time.sleep(0.02)
    return real(*args, **kwargs)

setattr(mod, name, wrapped)
from ascsharp.cli import main
sys.exit(main(sys.argv[6:]))
"""


def _terminate_mid_command(
    hook: tuple[str, str, Path, str], argv: list[str], tmp: Path, prelude: str = ""
):
    """Run `ascsharp argv` with the hook (after `prelude`, more code for the child), and
    SIGTERM it once it is inside the hooked function."""
    ready = tmp / "ready"
    module, name, folder, pattern = hook
    cmd = [sys.executable, "-c", prelude + textwrap.dedent(HOOK), module, name, str(folder),
           pattern, str(ready), *argv]  # fmt: skip
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    try:
        while not ready.exists():
            assert proc.poll() is None, f"ended before the signal: {proc.stderr.read()}"
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, stderr


def _debris(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("set") / "tau"
    generate_dataset(root, seed=3, **SMALL)
    return root


def _features_argv(root: Path, out: Path, threads: int) -> list[str]:
    mel = ["--sample-rate", "8000", "--n-fft", "256", "--hop-length", "80", "--n-mels", "16",
           "--fmin", "50", "--fmax", "4000"]  # fmt: skip
    return ["features", "--root", str(root), "--fold", "train", "--out-npy", str(out / "train.npy"),
            "--out-tsv", str(out / "train.tsv"), "--out-json", str(out / "train.json"),
            "--audio-sample-rate", "8000", "--clip-seconds", "0.5", "--dtype", "float32",
            "--threads", str(threads), *mel]  # fmt: skip


@pytest.mark.parametrize("threads", [1, 2])
def test_sigterm_during_features_leaves_no_temporary_store(small_set, tmp_path, threads):
    """Headline case 3: before the fix the killed job left its `.train.*.tmp.npy`."""
    out = tmp_path / "features"
    out.mkdir()
    hook = ("ascsharp.features.mel", "load_audio", out, ".train.*.tmp.npy")
    code, stderr = _terminate_mid_command(hook, _features_argv(small_set, out, threads), tmp_path)
    assert list(out.iterdir()) == []
    assert code == 128 + signal.SIGTERM, stderr
    # (A clip already running on another thread may still log its progress after this line.)
    assert (
        "ascsharp features: terminated by SIGTERM; temporary files removed" in stderr.splitlines()
    )


def test_sigterm_during_synth_leaves_no_staging_folder(tmp_path):
    argv = ["synth", "--root", str(tmp_path / "tau"), "--seed", "1",
            *(f"--{k.replace('_', '-')}={v}" for k, v in SMALL.items())]  # fmt: skip
    hook = ("ascsharp.data.synth", "_write_tables", tmp_path, ".tau.*.tmp")
    code, stderr = _terminate_mid_command(hook, argv, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ready"]
    assert code == 128 + signal.SIGTERM, stderr


def test_sigterm_during_unpack_leaves_no_staging_folder(small_set, tmp_path):
    """The zips are in downloads/ already (MD5 checked, nothing fetched); the record is read
    from a local file by a stand-in for fetch_record, written into the child's hook."""
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    files = [p for p in small_set.rglob("*") if p.is_file() and not p.name.startswith(".")]
    members = {f"top/{p.relative_to(small_set).as_posix()}": p.read_bytes() for p in files}
    (downloads / "set.zip").write_bytes(_zip(members))
    data = (downloads / "set.zip").read_bytes()
    record = [{"key": "set.zip", "size": len(data), "md5": hashlib.md5(data).hexdigest(),
               "url": "https://example.invalid/set.zip"}]  # fmt: skip
    (tmp_path / "record.json").write_text(json.dumps(record))
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    prelude = (
        "import json\nimport ascsharp.data.download as d\n"
        "d.fetch_record = lambda api: [d.FileEntry(**e) for e in "
        f"json.loads(open({str(tmp_path / 'record.json')!r}).read())]\n"
    )
    argv = ["download", "--api", "https://example.invalid/api/records/1", "--downloads",
            str(downloads), "--root", str(data_dir / "tau")]  # fmt: skip
    hook = ("ascsharp.data.download", "_unpack", data_dir, ".tau.*.tmp")
    code, stderr = _terminate_mid_command(hook, argv, tmp_path, prelude)
    assert list(data_dir.iterdir()) == []
    assert code == 128 + signal.SIGTERM, stderr


def test_a_rerun_removes_stale_temporaries_of_its_own_outputs(small_set, tmp_path):
    """What SIGKILL (no cleanup possible) leaves is removed by the next run of the same
    command; temporaries of other outputs in the same folder are left alone."""
    out = tmp_path / "features"
    out.mkdir()
    stale = [out / ".train.ab_12xyz.tmp.npy", out / ".train.k0k0k0k0.tmp.tsv"]
    other = out / ".test.ab_12xyz.tmp.npy"
    for p in [*stale, other]:
        p.write_bytes(b"debris")
    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    assert cli.main(_features_argv(small_set, out, 1)) == 0
    assert _debris(out) == [other.name]
    # In-process callers (these tests) get their own signal handlers back.
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == handlers

    (tmp_path / ".tau2.qwertyui.tmp").mkdir()
    (tmp_path / ".tau2.qwertyui.tmp" / "half.wav").write_bytes(b"debris")
    generate_dataset(tmp_path / "tau2", seed=1, **SMALL)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["features", "tau2"]


# --- feature stores ---------------------------------------------------------------------------
def test_store_files_are_published_index_array_settings_after_removing_the_old(
    small_set, tmp_path, monkeypatch
):
    """No old array can meet a new index: an earlier store goes first, and a rerun that fails
    midway leaves none of it."""
    out = tmp_path / "features"
    renamed: list[str] = []
    real_replace = os.replace

    def record(src, dst):
        renamed.append(Path(dst).name)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", record)
    assert cli.main(_features_argv(small_set, out, 1)) == 0
    assert renamed == ["train.tsv", "train.npy", "train.json"]

    table = validate_dataset(small_set, audio_sample_rate=None, clip_seconds=None)["train"]
    broken = table.copy()
    broken.loc[broken.index[-1], "filename"] = "audio/park-lyon-9-9-a.wav"  # absent: fails
    with pytest.raises(DatasetError, match="audio file missing"):
        extract_store(small_set, broken, out / "train.npy", out / "train.tsv", mel_config(
            sample_rate=8000, n_fft=256, hop_length=80, n_mels=16, fmax=4000.0),
            dtype="float32", clip_seconds=0.5, out_json=out / "train.json")  # fmt: skip
    assert list(out.iterdir()) == []


def test_atomic_path_fsyncs_the_file_before_the_rename(tmp_path, monkeypatch):
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.readlink(
        f"/proc/self/fd/{fd}"))), real_fsync(fd)))  # fmt: skip
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", str(a))),
                                                      real_replace(a, b)))  # fmt: skip
    with atomic_path(tmp_path / "x.json") as tmp:
        tmp.write_text("{}")
    assert events == [("fsync", str(tmp)), ("replace", str(tmp)), ("fsync", str(tmp_path))]


# --- bad values refused up front --------------------------------------------------------------
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_wav_with_non_finite_samples_is_refused_by_name(tmp_path, bad):
    wave = np.zeros(800, dtype=np.float32)
    wave[123] = bad
    path = tmp_path / "park-lyon-1-1-a.wav"
    sf.write(path, wave, 8000, subtype="FLOAT")
    with pytest.raises(DatasetError) as err:
        load_audio(path, 8000)
    assert str(err.value) == f"{path}: non-finite sample (NaN or inf) at sample 123; fix the file"


@pytest.mark.parametrize(
    ("key", "text"),
    [("landscape.x.min", "-.inf"), ("model.width", ".nan"), ("features.fmin", ".nan")],
)
def test_non_finite_config_numbers_are_refused_by_key(key, text):
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    *path, last = key.split(".")
    section = config
    for k in path:
        section = section.setdefault(k, {})
    section[last] = yaml.safe_load(text)
    with pytest.raises(ConfigError, match=rf"config: {key}: -?(nan|inf) is not a finite number"):
        validate_config(config)


@pytest.mark.parametrize(
    "name", ["audio/../../outside/x.wav", "/etc/x.wav", "audio/sub/park-lyon-1-1-a.wav", "x.wav"]
)
def test_listed_clips_must_lie_in_the_audio_folder(small_set, tmp_path, name):
    root = tmp_path / "tau"
    import shutil

    shutil.copytree(small_set, root)
    fold = root / "evaluation_setup" / "fold1_train.csv"
    lines = fold.read_text().splitlines()
    first = lines[1].split("\t")[0]
    fold.write_text("\n".join([lines[0], lines[1].replace(first, name), *lines[2:]]) + "\n")
    with pytest.raises(DatasetError) as err:
        validate_dataset(root, audio_sample_rate=None, clip_seconds=None)
    assert str(err.value).startswith(f"{fold}: {name!r} is not audio/<file>.wav inside")


# --- surfaces, shards and partial files -------------------------------------------------------
def _surface(path: Path, loss) -> Path:
    with h5py.File(path, "w") as f:
        f["xcoordinates"] = np.linspace(-1, 1, 3)
        f["ycoordinates"] = np.linspace(-1, 1, 3)
        f["train_loss"] = loss
    return path


@pytest.mark.parametrize(
    ("loss", "needle"),
    [
        (np.full((3, 3), -1.0), "holds -1.0 < 0"),
        (np.array([["a", "b", "c"]] * 3, dtype="S1"), "'train_loss' is not numeric"),
    ],
)
def test_bad_surface_is_one_line_naming_the_file(tmp_path, capsys, loss, needle):
    path = _surface(tmp_path / "s.h5", loss)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["sharpness", str(path), "--json"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{path}: " in err and needle in err


def test_shard_with_loss_and_indices_of_other_lengths_names_the_file(tmp_path):
    grid = Grid(-1, 1, 2, -1, 1, 1)
    meta = {"run": RUN, "direction_seed": 1, "fingerprint": "f", "n_shards": 1, "shard": 0,
            "split": "train"}  # fmt: skip
    write_shard(tmp_path / "shard~0.npz", grid, [0, 1], {0: (1.0, 0.5), 1: (2.0, 0.5)}, meta)
    with np.load(tmp_path / "shard~0.npz") as z:
        arrays = {k: z[k] for k in z.files}
    np.savez(tmp_path / "shard~0.npz", **{**arrays, "loss": arrays["loss"][:1]})
    with pytest.raises(ValueError, match=r"shard~0\.npz: loss has shape \(1,\), indices \(2,\)"):
        gather([tmp_path / "shard~0.npz"], tmp_path / "surface.h5")
    np.savez(tmp_path / "shard~0.npz", **{**arrays, "loss": np.array(["1", "2"])})
    with pytest.raises(ValueError, match=r"shard~0\.npz: loss is not numeric"):
        gather([tmp_path / "shard~0.npz"], tmp_path / "surface.h5")


def test_broken_partial_file_says_delete_it(tmp_path):
    path = tmp_path / "shard~0.npz.partial.json"
    for text in ('{"fingerprint": "f", "done": {"0": [1.0, 0.5]', '["not", "a", "partial"]'):
        path.write_text(text)
        with pytest.raises(ValueError) as err:
            read_partial(path, "f", "landscape", "inputs")
        assert str(err.value).startswith(f"{path}: ")
        assert str(err.value).endswith("delete it to start again")


def test_partial_file_units_with_non_finite_values_are_computed_again(tmp_path):
    path = tmp_path / "p.json"
    done = {"0": [1.0, 0.5], "1": [float("nan"), 0.5], "2": [1.5, float("inf")], "3": [2.0, 0.1]}
    write_partial(path, "f", done)
    assert read_partial(path, "f", "landscape", "inputs") == {"0": [1.0, 0.5], "3": [2.0, 0.1]}


def test_surface_reader_keeps_diverged_points(tmp_path):
    """NaN and inf are diverged points, not bad files: sharpness reports them (finite=False)."""
    loss = np.ones((3, 3))
    loss[0, 0] = np.nan
    x, y, got = read_surface(_surface(tmp_path / "s.h5", loss))
    assert np.isnan(got[0, 0])


def test_every_test_named_in_docs_faults_exists():
    """docs/faults.md names its tests as `tests/STAGE/FILE.py::NAME` (or `::NAME`: same file)."""
    import re

    text = (ROOT / "docs" / "faults.md").read_text()
    current, named = None, []
    for file, name in re.findall(r"`(tests/[\w/]+\.py)?::(test_\w+)`", text):
        current = file or current
        named.append((current, name))
    assert len(named) >= 20
    missing = [(f, n) for f, n in named if f"def {n}(" not in (ROOT / f).read_text()]
    assert missing == []
