"""``capsv prepare`` against a real HTTP server on 127.0.0.1 serving a tiny VoxCeleb."""
from __future__ import annotations

import io
import os
import signal
import stat
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from capsv.audio import load_audio
from capsv.cli import main
from capsv.commands.prepare import legacy_main
from capsv.prep.convert import decode_with_swresample
from capsv.prep.download import Downloader, RemoteFile, redact
from capsv.data.lists import read_train_list
from capsv.prep.voxceleb import VOXCELEB_FILES, make_plan, select_subsets
from prep_helpers import FileServer, md5, tone, write_m4a, write_wav

REPO = Path(__file__).resolve().parents[2]
USER, PASSWORD, KEY = "voxuser", "Pa55-w0rd-xyzzy", "key-0123456789abcdef"
SPEAKERS = ["id00012", "id00015", "id00020"]
CLIP_SECONDS = 0.4


def vox2_dev_zip(tmp: Path) -> tuple[bytes, list[str]]:
    """A VoxCeleb2-dev-like zip (``dev/aac/<spk>/<video>/<clip>.m4a``) and its clip paths."""
    buffer, clips = io.BytesIO(), []
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:
        for s, speaker in enumerate(SPEAKERS):
            for video in ("21Uxsk56VDQ", "Zq5Xo1xkV9s"):
                for clip in (1, 2):
                    m4a = tmp / f"{speaker}_{video}_{clip}.m4a"
                    write_m4a(str(m4a), tone(CLIP_SECONDS, 200 + 100 * s + 10 * clip, seed=clip))
                    rel = f"{speaker}/{video}/{clip:05d}"
                    zf.write(m4a, f"dev/aac/{rel}.m4a")
                    clips.append(rel)
    return buffer.getvalue(), sorted(clips)


def vox1_test_zip(tmp: Path) -> tuple[bytes, list[str]]:
    buffer, files = io.BytesIO(), []
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for s, speaker in enumerate(["id10270", "id10271"]):
            for clip in (1, 2):
                rel = f"{speaker}/5r0dWxy17C8/{clip:05d}.wav"
                wav = tmp / rel.replace("/", "_")
                write_wav(str(wav), tone(0.3, 300 + 50 * s, seed=s + clip))
                zf.write(wav, f"wav/{rel}")
                files.append(rel)
    return buffer.getvalue(), files


def split(data: bytes, n: int) -> list[bytes]:
    size = -(-len(data) // n)
    return [data[i:i + size] for i in range(0, len(data), size)]


def write_parts_list(path: Path, files: dict[str, bytes], extra: dict[str, str] | None = None) -> str:
    lines = [f"{name} {md5(data)}" for name, data in files.items() if not name.endswith(".txt")]
    lines += [f"{name} {digest}" for name, digest in (extra or {}).items()]
    path.write_text("# test parts\n" + "\n".join(lines) + "\n")
    return str(path)


def assert_no_secret(*texts: str, root: Path | None = None) -> None:
    for text in texts:
        assert PASSWORD not in text and KEY not in text
    if root is not None:
        for path in root.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                assert PASSWORD.encode() not in data and KEY.encode() not in data, path


@pytest.fixture
def voxceleb(tmp_path):
    """Server files for a tiny VoxCeleb (vox2 dev in 3 parts, vox1 test, veri_test.txt)."""
    fixtures = tmp_path / "fixtures"
    fixtures.mkdir()
    vox2, clips = vox2_dev_zip(fixtures)
    vox1, vox1_files = vox1_test_zip(fixtures)
    files = {f"vox2_dev_aac_parta{c}": part for c, part in zip("abc", split(vox2, 3))}
    files["vox1_test_wav.zip"] = vox1
    trials = [(1, vox1_files[0], vox1_files[1]), (0, vox1_files[0], vox1_files[2]),
              (1, vox1_files[2], vox1_files[3]), (0, vox1_files[1], vox1_files[3])]
    files["veri_test.txt"] = "".join(f"{l} {a} {b}\n" for l, a, b in trials).encode()
    parts_list = write_parts_list(fixtures / "parts.txt", files, {"vox2_dev_aac.zip": md5(vox2)})
    return {"files": files, "clips": clips, "vox1": vox1_files, "parts_list": parts_list,
            "save": tmp_path / "data"}


def test_end_to_end_download_extract_convert_lists(voxceleb, capfd):
    save = voxceleb["save"]
    with FileServer(voxceleb["files"], USER, PASSWORD) as server:
        argv = ["prepare", "--save_path", str(save), "--download", "--extract", "--convert",
                "--lists", "--user", USER, "--password", PASSWORD, "--base_url", server.url + "/vox",
                "--parts_list", voxceleb["parts_list"], "--meta_url", server.url + "/meta",
                "--test_lists", "veri_test.txt", "--workers", "2", "--jobs", "3", "--no_progress",
                "--subsets", "vox2_dev", "vox1_test"]
        assert main(argv) == 0
        fetched = {p.rsplit("/", 1)[1] for p, _, status in server.requests if status == 200}
        assert fetched == set(voxceleb["files"])

        # the train list covers every clip, as WAV, and every listed file loads as 16 kHz audio
        items = read_train_list(str(save / "train_list.txt"))
        assert items == [(c.split("/")[0], c + ".wav") for c in voxceleb["clips"]]
        root = save / "voxceleb" / "voxceleb2"
        n = int(CLIP_SECONDS * 16000)
        for _, rel in items:
            audio = load_audio(str(root / rel))
            # AAC adds up to ~2 frames of priming/padding, never drops samples
            assert n <= len(audio) <= n + 3 * 1024 and np.abs(audio).max() > 1000
        for rel in voxceleb["vox1"]:
            assert len(load_audio(str(save / "voxceleb" / "voxceleb1" / rel))) == int(0.3 * 16000)
        assert (save / "veri_test.txt").read_bytes() == voxceleb["files"]["veri_test.txt"]
        assert not list(save.rglob("*.part")) and not list(save.rglob("*.tmp"))

        # a second run finds everything done: no request, no work
        seen = len(server.requests)
        first = capfd.readouterr()
        assert main(argv) == 0
        assert len(server.requests) == seen
        second = capfd.readouterr()
        err = second.err
        assert "4 files skipped, their archives are already joined or extracted" in err
        assert "already extracted" in err
        assert "0 converted, 12 already done" in err
    assert_no_secret(first.out, first.err, second.out, second.err, root=save)


def test_killed_download_resumes_with_range_request(voxceleb, capfd):
    """SIGKILL the seed-style ``dataprep.py --download`` mid-file; the re-run resumes it."""
    save = voxceleb["save"]
    name = "vox2_dev_aac_partaa"
    payload = os.urandom(1_500_000)
    files = {name: payload}
    parts_list = write_parts_list(save.parent / "one.txt", files)
    with FileServer(files, USER, PASSWORD) as server:
        server.stall_at[name] = 600_000
        argv = ["--save_path", str(save), "--download", "--user", USER, "--password", PASSWORD,
                "--base_url", server.url + "/vox", "--parts_list", parts_list, "--no_progress"]
        env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
        proc = subprocess.Popen([sys.executable, str(REPO / "dataprep.py"), *argv], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        part = save / (name + ".part")
        deadline = time.monotonic() + 30
        while not (part.exists() and part.stat().st_size >= 600_000):
            assert proc.poll() is None and time.monotonic() < deadline, "download never started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate(timeout=10)
        assert not (save / name).exists()

        assert main(["prepare", *argv]) == 0
        assert server.ranges(name) == [None, "bytes=600000-"]
        assert (save / name).read_bytes() == payload and not part.exists()
    captured = capfd.readouterr()
    assert "resuming at byte 600000" in captured.err
    assert_no_secret(out, err, captured.out, captured.err, root=save)


def test_network_cut_is_retried_with_range_and_a_server_ignoring_range_restarts(tmp_path, capfd):
    payload = os.urandom(400_000)
    items = [RemoteFile("a.bin", md5(payload)), RemoteFile("b.bin", md5(payload))]
    with FileServer({"a.bin": payload, "b.bin": payload}) as server:
        server.drop_at.update({"a.bin": 150_000})
        Downloader(str(tmp_path), server.url + "/open", retry_wait=0, progress=False).fetch_all(items)
        assert server.ranges("a.bin") == [None, "bytes=150000-"]
        # a .part left over, and a server that answers Range with the whole file: start over
        (tmp_path / "c.bin.part").write_bytes(payload[:1000])
        server.files["c.bin"] = payload
        server.honour_range = False
        Downloader(str(tmp_path), server.url + "/open", progress=False).fetch_all(
            [RemoteFile("c.bin", md5(payload))])
    for name in ("a.bin", "b.bin", "c.bin"):
        assert (tmp_path / name).read_bytes() == payload
    assert "does not support resuming; starting over" in capfd.readouterr().err


def test_wrong_md5_is_reported_and_kept_aside(tmp_path, capfd):
    files = {"vox1_test_wav.zip": b"not the file you are looking for" * 100}
    parts_list = tmp_path / "parts.txt"
    parts_list.write_text("vox1_test_wav.zip 185fdc63c3c739954633d50379a3d102\n")
    with FileServer(files) as server:
        rc = main(["prepare", "--save_path", str(tmp_path / "data"), "--download", "--no_progress",
                   "--base_url", server.url + "/vox", "--parts_list", str(parts_list)])
    err = capfd.readouterr().err
    assert rc == 2
    assert "vox1_test_wav.zip: md5 is " + md5(files["vox1_test_wav.zip"]) in err
    assert "expected 185fdc63c3c739954633d50379a3d102" in err and "kept aside" in err
    assert (tmp_path / "data" / "vox1_test_wav.zip.bad").read_bytes() == files["vox1_test_wav.zip"]
    assert not (tmp_path / "data" / "vox1_test_wav.zip").exists()


@pytest.mark.parametrize("style", ["basic", "key"])
def test_refused_credentials_give_a_clear_message(tmp_path, capfd, style):
    files = {"vox1_test_wav.zip": b"x" * 1000}
    parts_list = write_parts_list(tmp_path / "parts.txt", files)
    with FileServer(files, USER, "the-real-password", key="the-real-key") as server:
        if style == "basic":
            auth = ["--user", USER, "--password", PASSWORD, "--base_url", server.url + "/vox"]
        else:
            auth = ["--key", KEY, "--base_url", server.url + "/download"]
        rc = main(["prepare", "--save_path", str(tmp_path / "data"), "--download", "--no_progress",
                   "--parts_list", parts_list, *auth])
    out = capfd.readouterr()
    assert rc == 2
    assert "refused the credentials (HTTP 401" in out.err
    assert ("check --user and --password" if style == "basic" else "check --key") in out.err
    assert_no_secret(out.out, out.err, root=tmp_path / "data")


def test_access_key_url_and_password_from_environment(tmp_path, monkeypatch, capfd):
    files = {"vox1_test_wav.zip": os.urandom(5000)}
    parts_list = write_parts_list(tmp_path / "parts.txt", files)
    with FileServer(files, key=KEY) as server:
        monkeypatch.setenv("CAPSV_KEY", KEY)
        assert main(["prepare", "--save_path", str(tmp_path / "data"), "--download", "--no_progress",
                     "--parts_list", parts_list, "--base_url", server.url + "/download"]) == 0
        assert server.requests[0][0].startswith("/download?file=vox1_test_wav.zip&key=")
    with FileServer(files, USER, PASSWORD) as server:
        monkeypatch.delenv("CAPSV_KEY")
        monkeypatch.setenv("CAPSV_PASSWORD", PASSWORD)
        assert main(["prepare", "--save_path", str(tmp_path / "data2"), "--download", "--no_progress",
                     "--user", USER, "--parts_list", parts_list, "--base_url", server.url + "/vox"]) == 0
    assert (tmp_path / "data2" / "vox1_test_wav.zip").read_bytes() == files["vox1_test_wav.zip"]
    out = capfd.readouterr()
    assert_no_secret(out.out, out.err, root=tmp_path)


def test_builtin_table_plans_the_published_joins():
    plan = make_plan(VOXCELEB_FILES)
    assert len(plan.downloads) == 14 and all(f.md5 for f in plan.downloads)
    joins = {j.target.name: (j.target.md5, j.parts) for j in plan.joins}
    assert joins == {
        "vox1_dev_wav.zip": ("ae63e55b951748cc486645f532ba230b",
                             [f"vox1_dev_wav_parta{c}" for c in "abcd"]),
        "vox2_dev_aac.zip": ("bbc063c46078a602ca71605645c2a402",
                             [f"vox2_dev_aac_parta{c}" for c in "abcdefgh"]),
    }
    assert plan.archives == ["vox1_test_wav.zip", "vox2_test_aac.zip", "vox1_dev_wav.zip",
                             "vox2_dev_aac.zip"]
    assert [f.name for f in make_plan(select_subsets(VOXCELEB_FILES, ["vox1_test"])).downloads] == \
        ["vox1_test_wav.zip"]


def test_redact_hides_secrets_in_urls():
    url = f"https://host/dl?file=a&key={KEY}"
    assert KEY not in redact(url, [KEY])
    assert "hunter2" not in redact("https://me:hunter2@host/x", [])


def _zip_with(entries: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in entries.items():
            zf.writestr(zipfile.ZipInfo(name), data)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return buffer.getvalue()


@pytest.mark.parametrize("bad", ["../evil.txt", "dev/aac/../../../evil.txt", "/tmp/evil.txt", "link"])
def test_unsafe_zip_entry_is_refused(tmp_path, capfd, bad):
    save = tmp_path / "data"
    save.mkdir()
    entries = {"dev/aac/id00001/v/00001.m4a": b"audio"}
    if bad == "link":
        data = _zip_with(entries, {"dev/aac/id00001/v/evil.txt": "/etc/passwd"})
    else:
        data = _zip_with({**entries, bad: b"gotcha"})
    (save / "vox2_test_aac.zip").write_bytes(data)
    parts_list = tmp_path / "parts.txt"
    parts_list.write_text(f"vox2_test_aac.zip {md5(data)}\n")
    rc = main(["prepare", "--save_path", str(save), "--extract", "--no_progress",
               "--parts_list", str(parts_list)])
    err = capfd.readouterr().err
    assert rc == 2 and "refused to extract" in err and "unsafe entr" in err
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert sorted(p.name for p in written) == ["parts.txt", "vox2_test_aac.zip"]
    assert not Path("/tmp/evil.txt").exists() or Path("/tmp/evil.txt").read_bytes() != b"gotcha"


def test_interrupted_extraction_resumes(tmp_path, capfd):
    save = tmp_path / "data"
    save.mkdir()
    data = _zip_with({f"wav/id10001/v/0000{i}.wav": bytes([i]) * 100 for i in range(3)})
    (save / "vox1_test_wav.zip").write_bytes(data)
    parts_list = tmp_path / "parts.txt"
    parts_list.write_text(f"vox1_test_wav.zip {md5(data)}\n")
    argv = ["prepare", "--save_path", str(save), "--extract", "--no_progress", "--parts_list", str(parts_list)]
    assert main(argv) == 0
    # as if killed before the end: no "extracted" record and one file not written yet
    (save / ".capsv" / "extracted" / "vox1_test_wav.zip").unlink()
    (save / "voxceleb" / "voxceleb1" / "id10001" / "v" / "00002.wav").unlink()
    assert main(argv) == 0
    assert "extracted 1 files into" in capfd.readouterr().err.splitlines()[-1]
    assert (save / "voxceleb" / "voxceleb1" / "id10001" / "v" / "00002.wav").read_bytes() == bytes([2]) * 100


def test_joined_archive_with_wrong_md5_is_kept_aside(tmp_path, capfd):
    save = tmp_path / "data"
    save.mkdir()
    files = {"vox1_dev_wav_partaa": b"a" * 100, "vox1_dev_wav_partab": b"b" * 50}
    for name, data in files.items():
        (save / name).write_bytes(data)
    parts_list = write_parts_list(tmp_path / "parts.txt", files, {"vox1_dev_wav.zip": "0" * 32})
    rc = main(["prepare", "--save_path", str(save), "--concatenate", "--no_progress",
               "--parts_list", parts_list])
    err = capfd.readouterr().err
    assert rc == 2 and "joined file's md5" in err and "vox1_dev_wav_partaa, vox1_dev_wav_partab" in err
    assert (save / "vox1_dev_wav.zip.bad").stat().st_size == 150
    assert not (save / "vox1_dev_wav.zip").exists()


def test_corrupt_m4a_is_reported_and_the_rest_converted(tmp_path, capfd):
    root = tmp_path / "data" / "voxceleb" / "voxceleb2"
    good = []
    for i, speaker in enumerate(["id00001", "id00002"]):
        for clip in (1, 2):
            path = root / speaker / "vid" / f"{clip:05d}.m4a"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_m4a(str(path), tone(0.3, 250 + 60 * i, seed=clip))
            good.append(path)
    corrupt = root / "id00002" / "vid" / "00003.m4a"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypM4A " + os.urandom(3000))
    # the seed's `python dataprep.py --convert` (which also writes the lists)
    rc = legacy_main(["--save_path", str(tmp_path / "data"), "--convert", "--test_lists", "none",
                      "--workers", "2", "--no_progress"])
    err = capfd.readouterr().err
    assert rc == 1
    assert str(corrupt) in err and "1 files could not be converted" in err
    failures = (tmp_path / "data" / "conversion_failures.txt").read_text().splitlines()
    assert [line.split("\t")[0] for line in failures] == [str(corrupt)]
    for path in good:
        wav = load_audio(str(path.with_suffix(".wav")))
        assert len(wav) >= int(0.3 * 16000)
        # the fast float->int16 path gives exactly what libswresample gives
        assert np.array_equal(wav, decode_with_swresample(str(path)).astype(np.float32))
    assert not corrupt.with_suffix(".wav").exists()
    assert not [p for p in root.rglob("*") if p.name.endswith(".tmp")]
    items = read_train_list(str(tmp_path / "data" / "train_list.txt"))
    assert [p for _, p in items] == [str(p.relative_to(root).with_suffix(".wav")) for p in good]
    assert "1 .m4a clips have no .wav yet" in err


def test_missing_trial_files_are_all_reported(tmp_path, capfd):
    save = tmp_path / "data"
    vox1 = save / "voxceleb" / "voxceleb1"
    vox2 = save / "voxceleb" / "voxceleb2" / "id00001" / "v"
    vox2.mkdir(parents=True)
    write_wav(str(vox2 / "00001.wav"), tone(0.2, 300))
    (vox1 / "id10001" / "a").mkdir(parents=True)
    write_wav(str(vox1 / "id10001" / "a" / "00001.wav"), tone(0.2, 300))
    (save / "veri_test.txt").write_text("1 id10001/a/00001.wav id10001/a/00002.wav\n"
                                        "0 id10001/a/00001.wav id10002/b/00001.wav\n")
    rc = main(["prepare", "--save_path", str(save), "--lists", "--test_lists", "veri_test.txt",
               "--meta_url", "http://127.0.0.1:9/unused", "--no_progress"])
    err = capfd.readouterr().err
    assert rc == 1 and "2 files are missing" in err
    assert (save / "veri_test.missing.txt").read_text().split() == ["id10001/a/00002.wav",
                                                                     "id10002/b/00001.wav"]
    assert (save / "train_list.txt").read_text() == "id00001 id00001/v/00001.wav\n"
