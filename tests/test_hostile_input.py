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
    from capsv import kaldi_io

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
