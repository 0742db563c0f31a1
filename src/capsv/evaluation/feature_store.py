"""Disk-backed evaluation features, so evaluation memory does not grow with the file count.

CAP keeps each file's backbone frames (num_eval, D, T) and unit meta-projections
(num_eval, T, D): 0.9 MB a file at the paper's protocol (10 crops x 128 x 88 float32, twice),
131 GB for VoxCeleb1-E/H. Here they are appended, file after file, to one flat binary file per
array and read back through read-only (copy-on-write) memory maps: their pages are page cache,
which the kernel reclaims under pressure, not the process's anonymous memory. What stays in
RAM per file is a row of shapes (a few int64s). TAP/SAP keep one (E,) vector per file.

Two kinds of folder:

- a temporary store (the default): its files are unlinked the moment they are created and live
  only through open handles and maps, so nothing is left on disk whatever ends the process
  (even SIGKILL);
- a cache folder the user names (``--eval_cache DIR``): the arrays, ``shapes.npz`` and, written
  last by an atomic rename, ``manifest.json``, which records what the features are of (model
  weights digest, protocol, the files with their sizes and modification times, format). A
  rerun reuses the folder only when its manifest matches and every array has the recorded
  size; anything else (an interrupted run leaves no manifest) is rebuilt, with a one-line note.
  A lock file keeps two processes from using one folder at once.

The in-memory form (``IN_MEMORY``) keeps today's tensors and is what the Python API uses.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile
from typing import Iterator, Mapping

import numpy as np
import torch

from ..errors import CapsvError

IN_MEMORY = ":memory:"        # eval_cache value: keep the features in RAM (no files)
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SHAPES = "shapes.npz"
LOCK = ".lock"
DTYPE = np.float32


class FeatureCacheError(CapsvError):
    """An evaluation cache folder that cannot be used (not writable, in use, disk full)."""


# --------------------------------------------------------------------------- keys
def weights_digest(net: torch.nn.Module) -> str:
    """sha256 of every tensor of the state dict (names, dtypes, shapes, bytes) and its config."""
    digest = hashlib.sha256(json.dumps(dict(getattr(net, "config", {})), sort_keys=True,
                                       default=str).encode())
    for name, tensor in sorted(net.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name} {t.dtype} {tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def files_digest(paths: list[str]) -> str:
    """sha256 of the files' paths, sizes and modification times, in order: a file replaced or
    rewritten in place gets new features."""
    digest = hashlib.sha256()
    for path in paths:
        st = os.stat(path)
        digest.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def cache_key(net, paths: list[str], eval_frames: int, num_eval: int) -> dict:
    """What a cache folder's features depend on; its manifest must equal this to be reused."""
    return {"format": FORMAT_VERSION, "dtype": np.dtype(DTYPE).name,
            "pooling": type(net.pooling).__name__, "weights": weights_digest(net),
            "eval_frames": int(eval_frames), "num_eval": int(num_eval),
            "n_files": len(paths), "files": files_digest(paths)}


# --------------------------------------------------------------------------- reading
class FeatureStore:
    """Read-only memory maps of the arrays a :class:`StoreWriter` wrote.

    ``shapes[name]`` (N, ndim) int64: file i's array ``name`` has shape ``shapes[name][i]`` and
    starts ``offsets[name][i]`` elements into the flat map. Tensors handed out are views of
    the maps (CPU); nothing is copied until a computation reads it.
    """

    def __init__(self, handles: dict[str, object], shapes: dict[str, np.ndarray], lock=None):
        self.shapes = shapes
        self.offsets = {n: np.concatenate([[0], np.cumsum(s.prod(axis=1))]) for n, s in shapes.items()}
        self.maps = {n: np.memmap(handles[n], dtype=DTYPE, mode="c", shape=(int(self.offsets[n][-1]),))
                     for n in shapes}
        self._handles, self._lock = handles, lock

    def __len__(self) -> int:
        return len(next(iter(self.shapes.values())))

    def names(self) -> list[str]:
        return list(self.shapes)

    def item(self, name: str, index: int) -> torch.Tensor:
        """File ``index``'s array ``name``, a view of the map."""
        start, stop = self.offsets[name][index], self.offsets[name][index + 1]
        return torch.from_numpy(self.maps[name][start:stop]).view(*self.shapes[name][index].tolist())

    def stacked(self, name: str) -> torch.Tensor | None:
        """(N, *shape) view of ``name`` when every file's shape is the same, else None."""
        shapes = self.shapes[name]
        if not (shapes == shapes[:1]).all():
            return None
        return torch.from_numpy(self.maps[name]).view(len(shapes), *shapes[0].tolist())

    def rows(self, name: str) -> "StoreRows":
        return StoreRows(self, name)

    def close(self) -> None:
        """Drop the maps and handles, and release the cache folder's lock."""
        self.maps = {}
        for handle in self._handles.values():
            if hasattr(handle, "close"):
                handle.close()
        if self._lock is not None:
            self._lock.close()
            self._lock = None


class StoreRows(Mapping):
    """``{file index: tensor view}`` over one array of a store, built on access, so code
    written for dicts of tensors (``feats.frames[i]``) reads the store lazily."""

    def __init__(self, store: FeatureStore, name: str):
        self.store, self.name = store, name

    def __getitem__(self, index) -> torch.Tensor:
        index = int(index)
        if not 0 <= index < len(self.store):
            raise KeyError(index)
        return self.store.item(self.name, index)

    def __contains__(self, index) -> bool:
        return isinstance(index, (int, np.integer)) and 0 <= int(index) < len(self.store)

    def __iter__(self) -> Iterator[int]:
        return iter(range(len(self.store)))

    def __len__(self) -> int:
        return len(self.store)


# --------------------------------------------------------------------------- writing
class StoreWriter:
    """Appends each file's arrays, file by file in index order, to one flat file per name.

    ``folder=None``: a temporary store whose files are unlinked at once (nothing to clean up).
    Otherwise the cache folder's previous manifest is removed first and the new one is written
    by :meth:`finish`, after every array is flushed to disk.
    """

    def __init__(self, n_files: int, names: list[str], folder: str | None = None,
                 key: dict | None = None, lock=None):
        self.n_files, self.folder, self.key, self.lock = n_files, folder, key, lock
        self.count = {n: 0 for n in names}
        self.shapes: dict[str, np.ndarray] = {}
        self.checked_space = False
        where = folder if folder is not None else tempfile.gettempdir()
        self.where = where
        try:
            if folder is None:
                self.handles = {n: tempfile.TemporaryFile(prefix="capsv-eval-", dir=where)
                                for n in names}
            else:
                _remove_quietly(os.path.join(folder, MANIFEST))   # invalid from now on
                self.handles = {n: open(os.path.join(folder, f"{n}.f32"), "w+b") for n in names}
        except OSError as exc:
            raise FeatureCacheError(f"{where}: cannot create evaluation feature files "
                                    f"({exc.strerror}); choose another folder with --eval_cache "
                                    "DIR") from None

    def append(self, name: str, index: int, array: np.ndarray, fill_gaps: bool = False) -> None:
        """File ``index``'s array ``name``; files must come in index order. ``fill_gaps``:
        files skipped before it (unreadable, left out of scoring) get zero rows shaped like it."""
        while fill_gaps and self.count[name] < index:
            self.append(name, self.count[name], np.zeros_like(array))
        if index != self.count[name]:
            raise ValueError(f"{name}: file {index} written out of order (expected {self.count[name]})")
        array = np.ascontiguousarray(array, dtype=DTYPE)
        if name not in self.shapes:
            self.shapes[name] = np.zeros((self.n_files, array.ndim), dtype=np.int64)
        self.shapes[name][index] = array.shape
        if not self.checked_space:
            self._check_space(array.nbytes)
        try:
            self.handles[name].write(memoryview(array).cast("B"))
        except OSError as exc:
            raise FeatureCacheError(f"{self.where}: cannot write evaluation features "
                                    f"({exc.strerror}); free some space or choose another "
                                    "folder with --eval_cache DIR") from None
        self.count[name] += 1

    def _check_space(self, first_file_bytes: int) -> None:
        """Fail at the first file, not hours later, when the disk cannot hold them all."""
        self.checked_space = True
        need = first_file_bytes * self.n_files * len(self.handles)
        st = os.statvfs(self.where)
        free = st.f_bavail * st.f_frsize
        if need > free:
            raise FeatureCacheError(f"{self.where}: evaluation features need about "
                                    f"{need / 2**30:.1f} GiB, only {free / 2**30:.1f} GiB free; "
                                    "choose another folder with --eval_cache DIR (or set TMPDIR)")

    def fill_gaps(self, up_to: int) -> None:
        """Zero rows, shaped like each name's last row, for the skipped files before ``up_to``."""
        for name, shapes in self.shapes.items():
            while self.count[name] < up_to:
                self.append(name, self.count[name], np.zeros(shapes[self.count[name] - 1], DTYPE))

    def finish(self, reusable: bool = True) -> FeatureStore:
        """Flush, write the manifest last (cache folders; not when the store holds zero rows
        of skipped files: a rerun must read those files again), and open the maps."""
        short = {n: c for n, c in self.count.items() if c != self.n_files}
        if short:
            raise ValueError(f"feature store incomplete: {short} of {self.n_files} files")
        for handle in self.handles.values():
            handle.flush()
            if self.folder is not None:
                os.fsync(handle.fileno())
        if self.folder is not None and reusable:
            self._write_manifest()
        return FeatureStore(self.handles, self.shapes, self.lock)

    def abandon(self) -> None:
        for handle in self.handles.values():
            handle.close()
        if self.lock is not None:
            self.lock.close()

    def _write_manifest(self) -> None:
        from ..utils import atomic_path, atomic_write_text
        with atomic_path(os.path.join(self.folder, SHAPES)) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **self.shapes)
        sizes = {n: os.fstat(h.fileno()).st_size for n, h in self.handles.items()}
        atomic_write_text(os.path.join(self.folder, MANIFEST),
                          json.dumps({**self.key, "sizes": sizes}, indent=1, sort_keys=True))


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


# --------------------------------------------------------------------------- cache folders
def lock_folder(folder: str):
    """Create ``folder`` and hold its lock (an open file; closing it releases the lock)."""
    try:
        os.makedirs(folder, exist_ok=True)
        handle = open(os.path.join(folder, LOCK), "a+")
    except OSError as exc:
        raise FeatureCacheError(f"--eval_cache {folder}: cannot use this folder "
                                f"({exc.strerror}); choose a writable one") from None
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise FeatureCacheError(f"--eval_cache {folder}: in use by another capsv process; wait "
                                "for it or choose another folder") from None
    return handle


def open_cached(folder: str, key: dict, names: list[str], lock) -> FeatureStore | None:
    """The store in ``folder`` when its manifest matches ``key`` and its arrays are whole;
    else None, with a one-line note when something unusable was there."""
    manifest_path = os.path.join(folder, MANIFEST)
    reason = _unusable_reason(folder, key, names)
    if reason is None:
        with np.load(os.path.join(folder, SHAPES), allow_pickle=False) as z:
            shapes = {n: z[n] for n in names}
        handles = {n: open(os.path.join(folder, f"{n}.f32"), "rb") for n in names}
        print(f"eval cache {folder}: reusing the features of {key['n_files']} files", flush=True)
        return FeatureStore(handles, shapes, lock)
    if reason != "empty":
        print(f"eval cache {folder}: {reason}; extracting again", flush=True)
    _remove_quietly(manifest_path)
    return None


def _unusable_reason(folder: str, key: dict, names: list[str]) -> str | None:
    """None when the folder's features can be trusted, else why not ("empty": nothing there)."""
    manifest_path = os.path.join(folder, MANIFEST)
    if not os.path.exists(manifest_path):
        present = any(os.path.exists(os.path.join(folder, f"{n}.f32")) for n in names)
        return "no manifest (an interrupted run?)" if present else "empty"
    try:
        with open(manifest_path, encoding="utf-8") as f:
            manifest = json.load(f)
        sizes = manifest.pop("sizes")
    except (OSError, ValueError, KeyError, AttributeError):
        return "unreadable manifest"
    changed = sorted(k for k in set(key) | set(manifest) if key.get(k) != manifest.get(k))
    if changed:
        return f"made for other {', '.join(changed)}"
    for name in names:
        path = os.path.join(folder, f"{name}.f32")
        if not os.path.exists(path) or os.path.getsize(path) != sizes.get(name):
            return f"{name}.f32 is missing or has the wrong size"
    try:
        with np.load(os.path.join(folder, SHAPES), allow_pickle=False) as z:
            for name in names:
                want = int(z[name].prod(axis=1).sum()) * np.dtype(DTYPE).itemsize
                if want != sizes[name] or len(z[name]) != key["n_files"]:
                    return f"{SHAPES} does not match {name}.f32"
    except (OSError, ValueError, KeyError):
        return f"unreadable {SHAPES}"
    return None


def begin(n_files: int, names: list[str], cache: str | None,
          key: dict | None) -> FeatureStore | StoreWriter:
    """The reusable store of cache folder ``cache``, or a writer to fill: a temporary store
    (``cache=None``) or the folder, which stays locked as long as either is open."""
    if cache is None:
        return StoreWriter(n_files, names)
    lock = lock_folder(cache)
    try:
        store = open_cached(cache, key, names, lock)
        return store if store is not None else StoreWriter(n_files, names, cache, key, lock)
    except BaseException:
        lock.close()
        raise
