"""Hostile and broken input through the real command line: files that try to run code,
paths that name the same file twice, disks that are full or read-only, lists that are not
UTF-8, archives cut short. Every case either works or ends in one line on stderr that names
the file, exit status 2, and no traceback (docs/reliability.md lists each case).

Each CLI case runs ``python -m capsv.cli`` in a real subprocess (with a timeout): what is
tested is the process's exit status and stderr, as a user or a script sees them.
"""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from speech_like import make_corpus, write_trials

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 120


def capsv(*argv: str, cwd: Path | None = None, env: dict | None = None,
          preexec_fn=None) -> subprocess.CompletedProcess:
    """Run ``python -m capsv.cli argv`` with this checkout's source first on the path."""
    full_env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO / "src"), os.environ.get("PYTHONPATH", "")]), **(env or {}))
    return subprocess.run([sys.executable, "-m", "capsv.cli", *map(str, argv)],
                          capture_output=True, text=True, timeout=TIMEOUT_S, cwd=cwd,
                          env=full_env, stdin=subprocess.DEVNULL, preexec_fn=preexec_fn)


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit status 2, no traceback, and a single ``error:`` line holding every needle."""
    err = result.stderr
    assert "Traceback" not in err, err
    assert result.returncode == 2, (result.returncode, err)
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if ": error: " in line]
    assert len(errors) == 1, err
    for needle in needles:
        assert str(needle) in errors[0], (needle, errors[0])
    return errors[0]


# ----------------------------------------------------------------- Kaldi embeddings
class _RunsCode:
    """Unpickling this runs ``touch <marker>``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def kaldi_dir(tmp_path_factory) -> Path:
    """Two keys' embeddings written by kaldiio (binary ark + scp), and a trial list on them."""
    kaldiio = pytest.importorskip("kaldiio")
    root = tmp_path_factory.mktemp("kaldi")
    rng = np.random.default_rng(0)
    with kaldiio.WriteHelper(f"ark,scp:{root / 'emb.ark'},{root / 'emb.scp'}") as writer:
        for key in ("a.wav", "b.wav", "c.wav"):
            vector = rng.standard_normal(8).astype(np.float32)
            writer(key, vector / np.linalg.norm(vector))
    (root / "trials.txt").write_text("1 a.wav b.wav\n0 a.wav c.wav\n")
    return root


def test_kaldi_files_of_every_plain_type_read_like_kaldiio(tmp_path):
    """float/double vectors and matrices, binary and text, by ark and by scp: the same keys
    and values kaldiio reads."""
    kaldiio = pytest.importorskip("kaldiio")
    from capsv.evaluation import kaldi_io

    rng = np.random.default_rng(1)
    values = {"fv": rng.standard_normal(5).astype(np.float32),
              "dv": rng.standard_normal(4),
              "fm": rng.standard_normal((2, 3)).astype(np.float32),
              "dm": rng.standard_normal((3, 2))}
    for spec, name in (("ark,scp:{0}.ark,{0}.scp", "bin"), ("ark,t,scp:{0}.ark,{0}.scp", "text")):
        with kaldiio.WriteHelper(spec.format(tmp_path / name)) as writer:
            for key, value in values.items():
                writer(key, value)
        for path in (tmp_path / f"{name}.ark", tmp_path / f"{name}.scp"):
            read = kaldi_io.read_scp if path.suffix == ".scp" else kaldi_io.read_ark
            got = read(str(path))
            expected = (list(kaldiio.load_scp(str(path)).items()) if path.suffix == ".scp"
                        else list(kaldiio.load_ark(str(path))))
            assert [k for k, _ in got] == [k for k, _ in expected] == list(values)
            for (_, a), (_, b) in zip(got, expected):
                np.testing.assert_allclose(a, b, rtol=1e-6)


def test_capsv_score_reads_a_kaldi_scp(kaldi_dir, tmp_path):
    out = capsv("score", "--embeddings", kaldi_dir / "emb.scp", "--test_list",
                kaldi_dir / "trials.txt", "--save_scores", tmp_path / "s.txt")
    assert out.returncode == 0, out.stderr
    assert "EER" in out.stdout and len((tmp_path / "s.txt").read_text().splitlines()) == 2


def test_a_pickled_ark_entry_is_refused_and_never_run(kaldi_dir, tmp_path):
    """kaldiio's ``PKL`` entry type is ``pickle.load``: refused, the payload never runs."""
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.ark"
    evil.write_bytes((kaldi_dir / "emb.ark").read_bytes() + b"c.wav PKL"
                     + pickle.dumps(_RunsCode(marker)))
    out = capsv("score", "--embeddings", evil, "--test_list", kaldi_dir / "trials.txt")
    assert not marker.exists(), "the pickled payload ran"
    assert_one_line_error(out, str(evil), "entry 4", "pickled")


@pytest.mark.parametrize("value", ["touch {marker} |", "| touch {marker}", "-"])
def test_an_scp_command_or_stdin_is_refused_and_never_run(kaldi_dir, tmp_path, value):
    """An scp value ending in '|' is a shell command to kaldiio; '-' is standard input."""
    marker = tmp_path / "PWNED"
    scp = tmp_path / "evil.scp"
    first = (kaldi_dir / "emb.scp").read_text().splitlines()[0]
    scp.write_text(f"{first}\nb.wav {value.format(marker=marker)}\n")
    out = capsv("score", "--embeddings", scp, "--test_list", kaldi_dir / "trials.txt")
    assert not marker.exists(), "the scp command ran"
    assert_one_line_error(out, f"{scp}:2")


# ----------------------------------------------------------------- silent wrong results
def _wav_with_list_chunk(path: Path, samples: np.ndarray, list_bytes: int, keep: int | None):
    """A 16 kHz PCM16 WAV whose ``data`` chunk sits behind a LIST chunk of ``list_bytes``;
    cut to ``keep`` bytes of audio when given (a download that stopped early)."""
    import struct

    body = samples.astype("<i2").tobytes()
    fmt = struct.pack("<4sIHHIIHH", b"fmt ", 16, 1, 1, 16000, 32000, 2, 16)
    info = b"LIST" + struct.pack("<I", list_bytes) + b"INFO" + b"\0" * (list_bytes - 4)
    data = b"data" + struct.pack("<I", len(body)) + body
    riff = b"WAVE" + fmt + info + data
    raw = b"RIFF" + struct.pack("<I", len(riff)) + riff
    if keep is not None:
        raw = raw[:len(raw) - len(body) + keep]
    path.write_bytes(raw)


@pytest.mark.parametrize("list_bytes", [8 * 1024, 100 * 1024])
def test_a_truncated_wav_is_caught_wherever_its_data_chunk_starts(tmp_path, list_bytes):
    """A data chunk after byte 4096 (behind an 8 KB LIST chunk) or after the 64 KB the crop
    reader parses: a cut file is an error in every reader, a complete one reads exactly."""
    from capsv import audio

    samples = (np.random.default_rng(0).standard_normal(16000) * 3000).astype(np.int16)
    whole, cut = tmp_path / "whole.wav", tmp_path / "cut.wav"
    _wav_with_list_chunk(whole, samples, list_bytes, None)
    _wav_with_list_chunk(cut, samples, list_bytes, keep=4000)
    np.testing.assert_array_equal(audio.load_audio(str(whole)), samples.astype(np.float32))
    readers = {"load_audio": lambda p: audio.load_audio(p),
               "load_eval_crops": lambda p: audio.load_eval_crops(p, 20, 2),
               "load_random_crop": lambda p: audio.load_random_crop(p, 20,
                                                                    np.random.default_rng(0)),
               "audio_info": lambda p: audio.audio_info(p)}
    for name, read in readers.items():
        read(str(whole))
        with pytest.raises(audio.AudioError, match="truncated WAV: the header declares 32000 "
                                                   "bytes of audio but the file holds 4000"):
            read(str(cut))


@pytest.mark.parametrize("repeat", ["1 ./a.wav b.wav", "1 x/../a.wav b.wav", "0 b.wav a.wav",
                                    "1 a.wav .//b.wav"])
def test_a_trial_repeated_under_another_spelling_or_order_is_refused(tmp_path, repeat):
    from capsv.data.lists import ListError, read_trials

    path = tmp_path / "trials.txt"
    path.write_text(f"1 a.wav b.wav\n0 a.wav c.wav\n{repeat}\n")
    with pytest.raises(ListError, match=r"trials.txt:3: the trial .* repeats line 1 "):
        read_trials(str(path))


def test_capsv_score_refuses_a_swapped_duplicate_trial(kaldi_dir, tmp_path):
    trials = tmp_path / "swapped.txt"
    trials.write_text("1 a.wav b.wav\n0 a.wav c.wav\n1 b.wav a.wav\n")
    out = capsv("score", "--embeddings", kaldi_dir / "emb.scp", "--test_list", trials)
    assert_one_line_error(out, f"{trials}:3", "repeats line 1")


def test_repeated_train_list_files_are_used_once_with_a_warning(tmp_path, capsys):
    from capsv.data.lists import ListError, read_train_list

    path = tmp_path / "train.txt"
    path.write_text("s1 a.wav\ns1 b.wav\ns1 ./a.wav\ns2 c.wav\ns1 x/../b.wav\ns2 c.wav\n")
    assert read_train_list(str(path)) == [("s1", "a.wav"), ("s1", "b.wav"), ("s2", "c.wav")]
    out = capsys.readouterr().out
    assert f"warning: {path}: 3 line(s) repeat a file already listed" in out
    path.write_text("s1 a.wav\ns2 b.wav\ns2 ./a.wav\n")
    with pytest.raises(ListError, match="the file ./a.wav is listed for two speakers, s1 and s2"):
        read_train_list(str(path))


# ----------------------------------------------------------------- one line, never a traceback
@pytest.fixture(scope="module")
def run_inputs(tmp_path_factory) -> Path:
    """A 4-speaker train list, a 2-speaker trial list and a tiny TAP checkpoint."""
    import torch

    from capsv.models.checkpoint import save_checkpoint
    from capsv.models import SpeakerNet
    from speech_like import write_train_list

    root = tmp_path_factory.mktemp("run_inputs")
    write_train_list(str(root / "train.txt"),
                     make_corpus(str(root / "train"), 4, 2, seconds=(0.3, 0.5), seed=1))
    write_trials(str(root / "trials.txt"),
                 make_corpus(str(root / "test"), 2, 2, seconds=(0.3, 0.5), seed=2, prefix="t"))
    torch.manual_seed(0)
    save_checkpoint(str(root / "tap.model"), SpeakerNet("ResNetSE34L", "TAP", 32))
    return root


def eval_argv(root: Path, *extra) -> list:
    return ["eval", "--initial_model", root / "tap.model", "--test_list", root / "trials.txt",
            "--test_path", root / "test", "--eval_frames", "20", "--num_eval", "2",
            "--nDataLoaderThread", "0", "--no_progress", "--device", "cpu", *extra]


def train_argv(root: Path, save_path: Path, *extra) -> list:
    return ["train", "--model", "ResNetSE34L", "--encoder_type", "TAP", "--nOut", "32",
            "--trainfunc", "softmaxproto", "--nSpeakers", "2", "--batch_size", "2",
            "--max_frames", "20", "--max_epoch", "1", "--optimizer", "adam",
            "--nDataLoaderThread", "0", "--device", "cpu", "--no_progress",
            "--train_list", root / "train.txt", "--train_path", root / "train",
            "--save_path", save_path, *extra]


def _absent_devices() -> list[str]:
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return (["cuda"] if count == 0 else []) + [f"cuda:{max(1, count)}", "gpu"]


@pytest.mark.parametrize("device", _absent_devices())
def test_a_device_this_machine_lacks_is_one_line(run_inputs, device):
    out = capsv(*eval_argv(run_inputs, "--device", device))
    assert_one_line_error(out, f"--device {device}")


@pytest.mark.parametrize("flag,value", [("--num_eval", "0"), ("--num_eval", "-2"),
                                        ("--eval_frames", "-5")])
def test_crop_flags_out_of_range_are_refused(run_inputs, flag, value):
    """--eval_frames -5 used to mean 'whole utterance' without a word; 0 still does."""
    out = capsv(*eval_argv(run_inputs, flag, value))
    assert_one_line_error(out, f"{flag} must be", f"got {value}")


def test_save_path_naming_a_file_is_one_line(run_inputs, tmp_path):
    a_file = tmp_path / "run.txt"
    a_file.write_text("not a folder\n")
    out = capsv(*train_argv(run_inputs, a_file))
    assert_one_line_error(out, f"--save_path {a_file} is a file, not a folder")


def test_an_unwritable_output_anywhere_is_one_line_naming_it(kaldi_dir, tmp_path):
    """The CLI's safety net: an OSError no code path expected (here ENOTDIR from a scores
    file under a regular file) is one line with the path and what to do."""
    a_file = tmp_path / "file"
    a_file.write_text("x")
    out = capsv("score", "--embeddings", kaldi_dir / "emb.scp", "--test_list",
                kaldi_dir / "trials.txt", "--save_scores", a_file / "scores.txt")
    assert_one_line_error(out, str(a_file), "in the way")


@pytest.mark.parametrize("kind", ["latin1", "utf16", "audio"])
def test_a_list_that_is_not_utf8_text_is_one_line(run_inputs, tmp_path, kind):
    path = tmp_path / f"{kind}.txt"
    if kind == "latin1":
        path.write_bytes("1 t00/utt00.wav t01/utt00.wav\n0 caf\u00e9.wav t01/utt01.wav\n"
                         .encode("latin-1"))
        needles = (f"{path}:2", "not UTF-8", "iconv")
    elif kind == "utf16":
        path.write_bytes("1 t00/utt00.wav t01/utt00.wav\n".encode("utf-16"))
        needles = (str(path), "UTF-16")
    else:
        path = run_inputs / "test" / "t00" / "utt00.wav"
        needles = (str(path), "a WAV file, not a UTF-8 text list")
    out = capsv(*eval_argv(run_inputs, "--test_list", path))
    assert_one_line_error(out, *needles)
    if kind == "latin1":                 # the train list reader shares the check
        from capsv.data.lists import ListError, read_train_list
        with pytest.raises(ListError, match=f"{path.name}:2: not UTF-8"):
            read_train_list(str(path))


# ----------------------------------------------------------------- full and read-only disks
def _mount(target: Path, *options: str) -> bool:
    """Mount (as root) a tmpfs or a remount at ``target``; False where mounting is not allowed."""
    if os.geteuid() != 0:
        return False
    done = subprocess.run(["mount", *options, str(target)], capture_output=True, timeout=30)
    return done.returncode == 0


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (root with mount), else None: the tests then limit the file size of
    the process instead (RLIMIT_FSIZE, EFBIG), which fails writes the same way."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = _mount(disk, "-t", "tmpfs", "-o", "size=1m", "tmpfs")
    yield disk if mounted else None
    if mounted:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True, timeout=30)


def _file_size_limit(limit: int):
    def setup():
        import resource
        import signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)    # a write past it fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return setup


def _fill(disk: Path) -> None:
    with open(disk / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass


def test_a_full_disk_at_start_up_is_one_line(run_inputs, small_disk, tmp_path):
    if small_disk is not None:
        _fill(small_disk)
        save, limit = small_disk / "run", None
    else:
        save, limit = tmp_path / "run", _file_size_limit(0)
    out = capsv(*train_argv(run_inputs, save), preexec_fn=limit)
    assert_one_line_error(out, f"cannot write in --save_path {save}")
    assert not list(save.rglob("*.tmp")) if save.exists() else True


def _train_one_epoch(root: Path, save_path: Path) -> None:
    """The run of :func:`train_argv`, in this process (a fresh interpreter costs seconds)."""
    from capsv import faults
    from capsv.train import train

    faults.arm("")
    train(dict(model="ResNetSE34L", encoder_type="TAP", nOut=32, trainfunc="softmaxproto",
               nSpeakers=2, batch_size=2, max_frames=20, max_epoch=1, optimizer="adam",
               nDataLoaderThread=0, device="cpu", no_progress=True,
               train_list=str(root / "train.txt"), train_path=str(root / "train"),
               save_path=str(save_path)))


def test_a_read_only_save_path_is_one_line_even_with_nothing_left_to_train(run_inputs,
                                                                          tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    as_root = os.geteuid() == 0
    if as_root and not _mount(run, "-t", "tmpfs", "-o", "size=64m", "tmpfs"):
        pytest.skip("root without permission to mount: a read-only folder cannot be made")
    try:
        _train_one_epoch(run_inputs, run)                 # epoch 1 of 1: nothing left after
        if as_root:
            assert _mount(run, "-o", "remount,ro")
        else:
            for folder in [run, *[p for p in run.rglob("*") if p.is_dir()]]:
                folder.chmod(0o555)
        out = capsv(*train_argv(run_inputs, run))
        assert_one_line_error(out, f"cannot write in --save_path {run}")
    finally:
        if as_root:
            subprocess.run(["umount", "-l", str(run)], capture_output=True, timeout=30)
        else:
            for folder in [run, *[p for p in run.rglob("*") if p.is_dir()]]:
                folder.chmod(0o755)


# ----------------------------------------------------------------- archives
def _vox1_zip(path: Path, entries: dict[str, bytes]) -> Path:
    """A zip named like VoxCeleb1 test (``wav/<spk>/<video>/<clip>.wav``) and a parts list."""
    import hashlib
    import zipfile

    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    parts = path.parent / "parts.txt"
    parts.write_text(f"{path.name} {hashlib.md5(path.read_bytes()).hexdigest()}\n")
    return parts


def _extract(save: Path, parts: Path, dataset_dir: Path | None = None, preexec_fn=None):
    extra = ["--dataset_dir", dataset_dir] if dataset_dir else []
    return capsv("prepare", "--save_path", save, "--extract", "--no_progress",
                 "--parts_list", parts, *extra, preexec_fn=preexec_fn)


def test_a_disk_filling_during_extract_is_one_line_and_leaves_no_temp_file(small_disk,
                                                                          tmp_path):
    save = tmp_path / "data"
    save.mkdir()
    big = np.random.default_rng(0).bytes(2 * 2**20)            # 2 MiB: more than the disk
    parts = _vox1_zip(save / "vox1_test_wav.zip", {"wav/id1/v/00001.wav": b"small",
                                                   "wav/id1/v/00002.wav": big})
    target = small_disk if small_disk is not None else tmp_path / "target"
    out = _extract(save, parts, target,
                   preexec_fn=None if small_disk is not None else _file_size_limit(2**18))
    assert_one_line_error(out, "wav/id1/v/00002.wav", "run --extract again")
    assert not [p for p in target.rglob("*") if p.name.endswith(".capsv-tmp")]
    assert (target / "voxceleb1" / "id1" / "v" / "00001.wav").read_bytes() == b"small"


def test_a_tar_gz_cut_mid_member_is_one_line_and_leaves_no_temp_file(tmp_path):
    import io
    import tarfile

    save = tmp_path / "data"
    save.mkdir()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        for i in range(2):
            data = np.random.default_rng(i).bytes(300_000)
            info = tarfile.TarInfo(f"wav/id1/v/{i}.wav")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    raw = buffer.getvalue()
    archive = save / "vox1_test_wav.tar.gz"
    archive.write_bytes(raw[:len(raw) // 2 + 1000])                # cut inside the 2nd member
    parts = tmp_path / "parts.txt"
    parts.write_text(f"vox1_test_wav.tar.gz {'0' * 32}\n")
    out = _extract(save, parts)
    assert_one_line_error(out, str(archive), "wav/id1/v/1.wav", "download it again")
    assert not [p for p in save.rglob("*") if p.name.endswith(".capsv-tmp")]


def test_an_encrypted_zip_entry_is_one_line_before_anything_is_written(tmp_path):
    save = tmp_path / "data"
    save.mkdir()
    archive = save / "vox1_test_wav.zip"
    parts = _vox1_zip(archive, {"wav/id1/v/00001.wav": b"plain",
                                "wav/id1/v/00002.wav": b"secret"})
    raw = bytearray(archive.read_bytes())      # set the 'encrypted' bit of the 2nd entry
    for signature, flag_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        second = raw.find(signature, raw.find(signature) + 1)
        raw[second + flag_at] |= 0x1
    archive.write_bytes(bytes(raw))
    parts.write_text(f"vox1_test_wav.zip {'0' * 32}\n")
    out = _extract(save, parts)
    assert_one_line_error(out, str(archive), "encrypted", "wav/id1/v/00002.wav")
    assert not (save / "voxceleb").exists()


def test_a_dataset_folder_linked_to_another_disk_extracts(tmp_path):
    """voxceleb1 -> another disk is the user's choice, not an unsafe archive; a deeper link
    that leads out is still refused, and the message names the link, not the archive."""
    save, other = tmp_path / "data", tmp_path / "other_disk"
    save.mkdir()
    (other / "vox1").mkdir(parents=True)
    (save / "voxceleb").mkdir()
    (save / "voxceleb" / "voxceleb1").symlink_to(other / "vox1")
    parts = _vox1_zip(save / "vox1_test_wav.zip", {"wav/id1/v/00001.wav": b"audio"})
    out = _extract(save, parts)
    assert out.returncode == 0, out.stderr
    assert (other / "vox1" / "id1" / "v" / "00001.wav").read_bytes() == b"audio"

    (other / "elsewhere").mkdir()
    (other / "vox1" / "id2").symlink_to(other / "elsewhere")
    parts = _vox1_zip(save / "vox1_test_wav.zip", {"wav/id2/v/00001.wav": b"audio"})
    (save / ".capsv" / "extracted" / "vox1_test_wav.zip").unlink()
    out = _extract(save, parts)
    line = assert_one_line_error(out, f"symbolic link {save / 'voxceleb' / 'voxceleb1' / 'id2'}",
                                 "on your disk")
    assert "archive is damaged" not in line
    assert not list((other / "elsewhere").iterdir())


def test_a_symlink_loop_in_the_train_tree_is_one_line(tmp_path):
    root = tmp_path / "data" / "voxceleb" / "voxceleb2"
    (root / "id1" / "v").mkdir(parents=True)
    (root / "id1" / "v" / "00001.wav").write_bytes(b"RIFF")
    (root / "id1" / "loop").symlink_to(root / "id1" / "loop")
    out = capsv("prepare", "--save_path", tmp_path / "data", "--lists", "--test_lists", "none")
    assert_one_line_error(out, str(root / "id1" / "loop"), "symbolic link loop")


# ----------------------------------------------------------------- smaller ones
def test_written_files_follow_the_umask_not_0600(tmp_path):
    """Checkpoints, scores, embeddings and converted WAVs: 0666 minus the umask, as any tool
    writes them, so collaborators on a shared cluster can read them."""
    import torch

    from capsv.models.checkpoint import save_checkpoint
    from capsv.prep.convert import write_wav_atomic
    from capsv.evaluation.embeddings import EmbeddingSet, write_embeddings
    from capsv.models import SpeakerNet
    from capsv.utils import atomic_write_text

    torch.manual_seed(0)
    net = SpeakerNet("ResNetSE34L", "TAP", 8)
    for umask, mode in ((0o022, 0o644), (0o027, 0o640)):
        old = os.umask(umask)
        try:
            written = [tmp_path / f"scores{umask}.txt", tmp_path / f"m{umask}.model",
                       tmp_path / f"a{umask}.wav", tmp_path / f"e{umask}.npz"]
            atomic_write_text(str(written[0]), "1 a b 0.5\n")
            save_checkpoint(str(written[1]), net)
            write_wav_atomic(str(written[2]), np.zeros(160, np.int16))
            write_embeddings(str(written[3]), EmbeddingSet(["a"], np.zeros((1, 4), np.float32)))
        finally:
            os.umask(old)
        assert {p.name: oct(p.stat().st_mode & 0o777) for p in written} == \
            {p.name: oct(mode) for p in written}


def test_a_text_file_as_checkpoint_is_not_called_a_code_risk(tmp_path):
    """Text that happens to start with a pickle opcode ('{', 'I', 'c'...) is 'not a
    checkpoint', not 'could run code' (that alarm stays for real pickles)."""
    from capsv.models.checkpoint import CheckpointError, read_checkpoint

    for text in ('{"epoch": 3}\n', "IT 1, LR 0.001, TEER/T1 12.5\n", "c1 a.wav b.wav\n"):
        path = tmp_path / "run.model"
        path.write_text(text)
        with pytest.raises(CheckpointError) as info:
            read_checkpoint(str(path))
        assert "not a PyTorch checkpoint" in str(info.value)
        assert "could run code" not in str(info.value)


def test_a_password_flag_is_warned_about_even_when_the_download_works(tmp_path, capfd):
    from capsv.cli import main
    from prep_helpers import FileServer

    files = {"vox1_test_wav.zip": os.urandom(2000)}
    parts = tmp_path / "parts.txt"
    import hashlib
    parts.write_text(f"vox1_test_wav.zip {hashlib.md5(files['vox1_test_wav.zip']).hexdigest()}\n")
    with FileServer(files, "user", "hunter2-secret") as server:
        rc = main(["prepare", "--save_path", str(tmp_path / "data"), "--download",
                   "--no_progress", "--parts_list", str(parts), "--user", "user",
                   "--password", "hunter2-secret", "--base_url", server.url + "/vox"])
    err = capfd.readouterr().err
    assert rc == 0, err
    assert "--password is visible to other users" in err and "CAPSV_PASSWORD" in err
    assert "hunter2-secret" not in err


def test_a_negative_crop_length_is_refused_from_python_too():
    """The CLI refuses --eval_frames -5; the Python entry points must not read it as
    whole-utterance scoring either."""
    from capsv.api import SpeakerVerifier
    from capsv.models import SpeakerNet
    from capsv.train import TrainConfig, TrainError

    net = SpeakerNet("ResNetSE34L", "TAP", 64)
    with pytest.raises(ValueError, match="eval_frames must be 0"):
        SpeakerVerifier(net, eval_frames=-5, device="cpu")
    with pytest.raises(TrainError, match="--eval_frames must be 0"):
        TrainConfig(train_list="x", train_path="y", eval_frames=-5).validate()
