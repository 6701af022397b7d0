"""Reliability: bit-reproducible, resumable, checksummed results; loud on bad input.

Most tests use a fake project in tmp_path (one tiny figure notebook and its own profile
file, through $NTKREPRO_ROOT / $NTKREPRO_PROFILES / $NTKREPRO_RESULTS), so that they are
fast and do not depend on the real figures. The determinism test runs the real smoke
notebook of lee2020/kernels_vs_networks twice.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import htmlcheck
import jax.numpy as jnp
import matplotlib
import matplotlib.image
import numpy as np
import pytest

from ntkrepro import config, kernels, memory, models, plotting, predict, results
from ntkrepro.claims import compare
from ntkrepro.intervals import Estimate
from ntkrepro.tooling import cli

EST = Estimate(1.0, 0.9, 1.1, "t-interval over 3 seeds", 3)

ROOT = Path(__file__).resolve().parent.parent
FAKE = "fake/fig"

# The parts of a results folder that record the moment of a run rather than its numbers:
# claim.json's start time and runtime, the checksum of claim.json itself (it covers them)
# and of the executed notebook, which papermill stamps with execution times.
VOLATILE_PROVENANCE = ("started", "runtime_s", "peak_rss_mib")
EXECUTED_NOTEBOOK = "{figure}.ipynb"

FAKE_SOURCE = """\
import time
from pathlib import Path

import jax
import numpy as np

import ntkrepro
from ntkrepro import plotting
from ntkrepro.claims import compare
from ntkrepro.intervals import over_seeds

run = ntkrepro.start("fake/fig", globals())
p = run.params
x = np.asarray(jax.random.normal(run.key_for("x"), (p["n"],)))
run.save_json("numbers", {"x": x})
run.save_arrays("arrays", x=x, twice=2 * x)
Path("waiting").touch()
while Path("hold").exists():  # the kill test holds the run here
    time.sleep(0.05)
fig, ax = plotting.subplots()
ax.plot(x, "o-")
run.save_figure(fig)
run.finish(
    [compare("a", "mean |x| is positive", "mean_abs", over_seeds(np.abs(x)), ">", 0.0)],
    title="Fake figure",
    scale="tiny",
    deviations=[],
)
"""

FAKE_PROFILES = """\
["fake/fig".smoke]
n = 5

["fake/fig".cpu]

["fake/fig".paper]
n = 1000

["fake/fig".bounds]
tolerance = [0.0, 1.0]
"""


def _notebook(parameters: str, source: str) -> dict:
    def cell(kind: str, text: str, tags: list[str] | None = None) -> dict:
        c = {"cell_type": kind, "metadata": {"tags": tags or []}, "source": text}
        if kind == "code":
            c.update(outputs=[], execution_count=None)
        return c

    return {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "language_info": {"name": "python"},
        },
        "cells": [
            cell("markdown", "# Fake figure"),
            cell("code", parameters, ["parameters"]),
            cell("code", source),
        ],
    }


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project root with one figure, fake/fig, its profile file and a results folder."""
    root = tmp_path / "project"
    (root / "notebooks" / "fake").mkdir(parents=True)
    params = 'profile = "cpu"\nn = 8\nseed = 0\ntolerance = 0.5\n'
    nb = _notebook(params, FAKE_SOURCE)
    (root / "notebooks" / "fake" / "fig.ipynb").write_text(json.dumps(nb, indent=1))
    (root / "profiles.toml").write_text(FAKE_PROFILES)
    monkeypatch.setenv("NTKREPRO_ROOT", str(root))
    monkeypatch.setenv("NTKREPRO_PROFILES", str(root / "profiles.toml"))
    monkeypatch.setenv("NTKREPRO_RESULTS", str(root / "results"))
    return root


def _folder(project: Path, profile: str = "smoke") -> Path:
    return project / "results" / profile / FAKE


def _make_results(profile: str = "smoke", **explicit) -> Path:
    """A finished run of fake/fig made in this process (no kernel), sealed like
    ``ntkrepro run`` seals it."""
    r = results.start(FAKE, {"profile": profile, **explicit})  # as a script: no IPython
    x = np.arange(r.params["n"], dtype=np.float32)
    r.save_json("numbers", {"x": x})
    r.save_arrays("arrays", x=x)
    fig, ax = plotting.subplots()
    ax.plot(x)
    r.save_figure(fig)
    matplotlib.pyplot.close(fig)
    r.finish([compare("a", "claim", "x", EST, "<=", 2.0)], title="t", scale="s", deviations=[])
    executed = r.final_dir / "fig.ipynb"
    executed.write_text(json.dumps(_notebook("", "")))
    results.seal_notebook(r.final_dir, executed)
    return r.final_dir


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m ntkrepro.tooling.cli ARGS`` in a subprocess with this process's environment."""
    return subprocess.run(
        [sys.executable, "-m", "ntkrepro.tooling.cli", *args],
        cwd=ROOT,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _comparable(folder: Path, figure: str) -> dict[str, object]:
    """Every file of a results folder, minus what records the moment of the run."""
    files: dict[str, object] = {}
    for name, data in _snapshot(folder).items():
        if name == EXECUTED_NOTEBOOK.format(figure=figure):
            continue
        if name == config.CLAIM_FILE:
            claim = json.loads(data)
            for key in VOLATILE_PROVENANCE:
                del claim["provenance"][key]
            del claim["claim_sha256"], claim["checksums"][f"{figure}.ipynb"]
            files[name] = claim
        else:
            files[name] = data
    return files


# ---------------------------------------------------------------------------- 1 determinism


@pytest.mark.slow
def test_fake_figure_run_twice_gives_identical_bytes(project: Path) -> None:
    assert _cli("run", "--profile", "smoke").returncode == 0
    first = _comparable(_folder(project), "fig")
    proc = _cli("run", "--profile", "smoke", "--force")
    assert proc.returncode == 0, proc.stderr
    second = _comparable(_folder(project), "fig")
    expected = {"arrays.npz", "claim.json", "figure.pdf", "figure.png", "numbers.json"}
    assert set(first) == expected
    for name in expected:
        assert first[name] == second[name], f"{name} differs between identical runs"
    with np.load(_folder(project) / "arrays.npz", allow_pickle=False) as z:
        prov = json.loads(z["provenance"].tobytes())
        assert prov["root_seed"] == 0 and np.allclose(z["twice"], 2 * z["x"])


# ---------------------------------------------------------------------------- 2 provenance


def test_every_result_file_records_its_provenance(project: Path) -> None:
    folder = _make_results()
    numbers = json.loads((folder / "numbers.json").read_text())["provenance"]
    with np.load(folder / "arrays.npz", allow_pickle=False) as z:
        arrays = json.loads(z["provenance"].tobytes())
    claim = results.read_claim(folder)["provenance"]
    assert numbers == arrays
    for field in VOLATILE_PROVENANCE:  # the moment of the run, machine facts: claim.json only
        assert field not in numbers and field in claim
    assert {k: v for k, v in claim.items() if k not in VOLATILE_PROVENANCE} == numbers
    assert numbers["notebook"] == "notebooks/fake/fig.ipynb" and numbers["profile"] == "smoke"
    assert numbers["parameters"] == {"profile": "smoke", "n": 5, "seed": 0, "tolerance": 0.5}
    assert numbers["root_seed"] == 0
    for package in ("jax", "jaxlib", "neural-tangents", "flax", "optax"):
        assert numbers["versions"][package] != "not installed", package
    assert numbers["ntkrepro"] and numbers["device"] == "cpu" and numbers["host"]["cpu"]
    assert "git_commit" in numbers and "git_dirty" in numbers
    assert "notebooks/fake/fig.ipynb" in numbers["code_files"]
    assert "ntkrepro/config.py" in numbers["code_files"]


def test_npz_bytes_are_stable_and_load_without_pickle(tmp_path: Path) -> None:
    arrays = {"a": np.arange(3.0), "b": np.eye(2, dtype=np.float32)}
    first = results.npz_bytes(arrays)
    time.sleep(1.1)  # np.savez would stamp a new time
    assert results.npz_bytes(arrays) == first
    (tmp_path / "x.npz").write_bytes(first)
    with np.load(tmp_path / "x.npz", allow_pickle=False) as z:
        assert np.array_equal(z["b"], arrays["b"]) and z["b"].dtype == np.float32


# ---------------------------------------------------------------------------- 3 resume


def _state(explicit: dict | None = None, profile: str = "smoke") -> tuple[str, str]:
    return results.result_state(FAKE, profile, explicit or {})


def test_current_results_are_skipped_stale_ones_named(project: Path) -> None:
    _make_results()
    assert _state() == ("current", "")
    state, reason = _state({"n": 6})
    assert state == "stale" and "n (run: 5, now: 6)" in reason
    path = project / "notebooks" / "fake" / "fig.ipynb"
    nb = json.loads(path.read_text())
    nb["cells"][0]["source"] = "# A new title"  # markdown: not code
    path.write_text(json.dumps(nb))
    assert _state() == ("current", "")
    nb["cells"][2]["source"] += "\nprint('changed')\n"
    path.write_text(json.dumps(nb))
    state, reason = _state()
    assert state == "stale" and reason == "code changed since the run: notebooks/fake/fig.ipynb"


def test_a_change_to_an_imported_module_makes_results_stale(project: Path) -> None:
    folder = _make_results()
    record = results.read_claim(folder)
    record["provenance"]["code_files"]["ntkrepro/claims.py"] = "0" * 64
    results.write_claim(folder, record)  # as if claims.py had been different during the run
    assert _state() == ("stale", "code changed since the run: ntkrepro/claims.py")


@pytest.mark.slow
def test_killed_run_leaves_no_result_and_the_next_run_completes(project: Path) -> None:
    folder, partial = _folder(project), _folder(project).with_name("fig.partial")

    def start_and_kill(*args: str) -> None:
        (project / "hold").touch()
        (project / "waiting").unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "ntkrepro.tooling.cli", "run", "--profile", "smoke", *args]
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=dict(os.environ), start_new_session=True, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 240
        while not (project / "waiting").exists():
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "the run did not reach its hold point"
            time.sleep(0.1)
        assert (partial / "numbers.json").is_file()  # mid-run: half of the results written
        os.killpg(proc.pid, signal.SIGKILL)  # ntkrepro, papermill and the kernel
        proc.wait(timeout=30)
        (project / "hold").unlink()

    start_and_kill()  # the first run ever, killed
    assert not folder.exists(), "a killed run must not publish anything"
    assert _state()[0] == "missing"

    proc = _cli("run", "--profile", "smoke")  # the next run completes
    assert proc.returncode == 0 and "was missing" in proc.stdout, proc.stdout + proc.stderr
    assert _state() == ("current", "") and not partial.exists()
    before = _snapshot(folder)

    start_and_kill("--force")  # a forced rerun, killed: the earlier results stay
    assert _snapshot(folder) == before
    assert _state() == ("current", "")
    proc = _cli("run", "--profile", "smoke")
    assert proc.returncode == 0 and f"[skip] {FAKE}" in proc.stdout, proc.stdout


@pytest.mark.slow
def test_two_runs_of_one_figure_cannot_interleave(project: Path) -> None:
    """Jobs sharing a checkout: the second run of a figure stops before any compute with
    a message naming the live one; the first completes untouched."""
    (project / "hold").touch()
    (project / "waiting").unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "ntkrepro.tooling.cli", "run", "--profile", "smoke"]
    first = subprocess.Popen(
        cmd, cwd=ROOT, env=dict(os.environ), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + 240
    while not (project / "waiting").exists():
        assert first.poll() is None, first.stdout.read()
        assert time.monotonic() < deadline, "the first run did not reach its hold point"
        time.sleep(0.1)
    with pytest.raises(results.RunLockedError, match=f"pid {first.pid}|another run of {FAKE}"):
        results.start(FAKE, {"profile": "smoke"})
    second = _cli("run", "--profile", "smoke", "--force")
    assert second.returncode != 0 and "another run of fake/fig is in progress" in (
        second.stdout + second.stderr
    )
    partial = _folder(project).with_name("fig.partial")
    assert (partial / "numbers.json").is_file(), "the second run must not clear the first's files"
    (project / "hold").unlink()
    assert first.wait(timeout=240) == 0, first.stdout.read()
    assert _state() == ("current", "")


def test_a_run_started_again_in_the_same_process_takes_its_lock_over(project: Path) -> None:
    first = results.start(FAKE, {"profile": "smoke"})
    again = results.start(FAKE, {"profile": "smoke"})  # a re-run setup cell
    again.save_json("numbers", {"x": [1]})
    again.finish([compare("a", "c", "x", EST, "<=", 2.0)], title="t", scale="s")
    assert (again.final_dir / "claim.json").is_file() and first.lock is not again.lock
    results.start(FAKE, {"profile": "smoke"})  # the lock was released by finish


def test_a_run_killed_between_the_two_renames_is_recovered(project: Path) -> None:
    final = _make_results()
    before = _snapshot(final)
    os.replace(final, final.with_name("fig.old"))  # killed after moving the old one aside
    results.start(FAKE, {"profile": "smoke"})
    assert _snapshot(final) == before and not final.with_name("fig.old").exists()
    assert _state() == ("current", "")


# ---------------------------------------------------------------------------- 4 integrity


@pytest.mark.parametrize(
    ("name", "damage"),
    [
        ("numbers.json", lambda b: b[: len(b) // 2]),  # truncated
        ("numbers.json", lambda b: b.replace(b'"x": [', b'"x": [9, ', 1)),  # edited, valid
        ("arrays.npz", lambda b: b[:-1]),
        ("figure.png", lambda b: b[:100] + bytes([b[100] ^ 1]) + b[101:]),  # one bit
        ("figure.pdf", lambda b: b + b"\n"),
        ("fig.ipynb", lambda b: b.replace(b"Fake figure", b"Fake result")),
    ],
)
def test_damaged_result_file_is_detected(project: Path, name: str, damage) -> None:
    path = _make_results() / name
    path.write_bytes(damage(path.read_bytes()))
    state, reason = _state()
    assert state == "corrupt" and str(path) in reason and "checksum" in reason


@pytest.mark.parametrize(
    "damage",
    [
        lambda t: t[: len(t) // 2],
        lambda t: t.replace('"verdict": "reproduced"', '"verdict": "not reproduced"', 1),
        lambda t: json.dumps({k: v for k, v in json.loads(t).items() if k != "claim_sha256"}),
    ],
)
def test_damaged_claim_is_detected(project: Path, damage) -> None:
    path = _make_results() / config.CLAIM_FILE
    path.write_text(damage(path.read_text()))
    assert _state()[0] == "corrupt"


def test_missing_result_file_is_detected(project: Path) -> None:
    (_make_results() / "figure.pdf").unlink()
    state, reason = _state()
    assert state == "corrupt" and "figure.pdf is missing" in reason


def test_results_without_executed_notebook_are_missing(project: Path) -> None:
    r = results.start(FAKE, {"profile": "smoke"})  # a run outside `ntkrepro run`
    r.finish([compare("a", "c", "x", EST, "<=", 2.0)], title="t", scale="s", deviations=[])
    state, reason = _state()
    assert state == "missing" and "no executed notebook" in reason


@pytest.mark.slow
def test_corrupt_results_are_recomputed_by_run(project: Path) -> None:
    assert _cli("run", "--profile", "smoke").returncode == 0
    numbers = _folder(project) / "numbers.json"
    good = numbers.read_bytes()
    numbers.write_bytes(good[:50])
    listing = _cli("list", "--profile", "smoke").stdout
    assert "corrupt" in listing and "checksum mismatch" in listing, listing
    proc = _cli("run", "--profile", "smoke")
    assert proc.returncode == 0 and "was corrupt" in proc.stdout, proc.stdout + proc.stderr
    assert numbers.read_bytes() == good and _state() == ("current", "")


# ---------------------------------------------------------------------------- 5 numerics


def test_mark_diverged_draws_at_the_value_or_the_top_edge() -> None:
    fig, ax = plotting.subplots()
    ax.plot([1, 2, 3], [0.5, np.nan, 0.7])
    plotting.mark_diverged(ax, [2, 3], [np.nan, 0.7])
    plotting.mark_diverged(ax, [])  # nothing diverged: nothing drawn
    marks = [line for line in ax.lines if line.get_marker() == "x"]
    assert len(marks) == 2 and all(m.get_color() == plotting.DIVERGED for m in marks)
    assert [m.get_label() for m in marks].count("diverged") == 1  # one legend entry
    at_value = next(m for m in marks if m.get_transform() == ax.transData)
    assert at_value.get_xydata().tolist() == [[3.0, 0.7]]
    matplotlib.pyplot.close(fig)


def _ill_conditioned(n: int = 60, condition: float = 1e9) -> np.ndarray:
    """A symmetric positive definite kernel with the given condition number."""
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return (q * np.logspace(0, -np.log10(condition), n)) @ q.T


def test_float32_singular_solve_is_reported_not_raised() -> None:
    k = _ill_conditioned()
    y = np.ones((60, 2))
    report32 = predict.solve_report(k, np.float32)
    assert report32["singular"] and report32["condition_number"] > report32["critical_condition"]
    assert not predict.solve_report(k, np.float64)["singular"]
    assert not predict.solve_report(k, np.float32, diag_reg=1e-2)["singular"]
    pred, report = predict.kernel_regression_report(k, k[:5], y, dtype=np.float32)
    assert pred.shape == (5, 2) and report["singular"] and report["dtype"] == "float32"
    json.dumps(report)  # recordable as is
    good, ok = predict.kernel_regression_report(k, k[:5], y, dtype=np.float64)
    assert not ok["singular"] and ok["finite"]
    np.testing.assert_allclose(good, predict.kernel_regression(k, k[:5], y), rtol=1e-8)


def test_float32_cholesky_failure_says_it_is_a_finding() -> None:
    k = _ill_conditioned(condition=1e12)
    k[0, 0] -= 1e-6  # no longer positive definite in float32
    with pytest.raises(predict.SingularKernelError, match="singular in float32.*finding"):
        predict.kernel_regression(k, k[:3], np.ones((60, 1)), dtype=np.float32)
    pred, report = predict.kernel_regression_report(k, k[:3], np.ones((60, 1)))
    assert report["failed"] and report["singular"] and np.isnan(pred).all()


def test_screenshot_check_tells_a_blank_page_from_one_with_figures(tmp_path: Path) -> None:
    blank, page = tmp_path / "blank.png", tmp_path / "page.png"
    matplotlib.image.imsave(blank, np.ones((200, 300, 3)))
    fig, ax = plotting.subplots()
    for i in range(5):
        ax.plot(np.sin(np.linspace(0, 6, 50) + i), color=plotting.shade(i, 5))
    fig.savefig(page)
    matplotlib.pyplot.close(fig)
    problems = htmlcheck.screenshot_problems(blank)
    assert len(problems) == 2 and "is blank" in problems[0] and "no figure" in problems[1]
    assert htmlcheck.screenshot_problems(page) == []
    assert "not a readable PNG" in htmlcheck.screenshot_problems(tmp_path / "missing.png")[0]


# ---------------------------------------------------------------------------- 6 bad input


def test_memory_estimate_refuses_before_compute(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NTKREPRO_MAX_MEMORY_GB", "0.001")  # 1 MB

    def kernel_fn(*args):
        raise AssertionError("the kernel must not be computed")

    x = np.zeros((1000, 4), np.float32)
    with pytest.raises(memory.MemoryBudgetError) as err:
        kernels.analytic(kernel_fn, x)
    message = str(err.value)
    assert "1000 x 1000" in message and "0.008 GB" in message and "0.001 GB" in message
    assert "NTKREPRO_MAX_MEMORY_GB" in message and "Reduce" in message
    assert isinstance(err.value, config.ParameterError)  # `ntkrepro run` reports it as bad input


def test_wide_deep_empirical_ntk_is_refused_with_the_number(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NTKREPRO_MAX_MEMORY_GB", "0.05")
    import jax

    init_fn, apply_fn, _ = models.fcn(1024, 3, 10)
    _, params = jax.eval_shape(lambda k: init_fn(k, (1, 8)), jax.random.PRNGKey(0))  # shapes
    x = jnp.zeros((256, 8))
    with pytest.raises(memory.MemoryBudgetError) as err:
        kernels.empirical_ntk(apply_fn, params, x, implementation="jacobian_contraction")
    message = str(err.value)
    # 2.1M parameters x 10 outputs x 2 blocks of 128, float32: 22 GB of Jacobians.
    assert "2,118,666 parameters" in message and "jacobians 21.7 GB" in message
    assert "Reduce width or depth" in message
    # "auto" takes structured derivatives (no Jacobians held), whose compiled block needs
    # ~46 MB: refused below that, before any compute, with that number.
    monkeypatch.setenv("NTKREPRO_MAX_MEMORY_GB", "0.002")
    with pytest.raises(memory.MemoryBudgetError, match=r"working memory of a block \(compiled\)"):
        kernels.empirical_ntk(apply_fn, params, x)
    monkeypatch.setenv("NTKREPRO_MAX_MEMORY_GB", "0.05")
    init_fn, apply_fn, _ = models.fcn(16, 1, 10)  # a narrow one fits
    _, params = init_fn(jax.random.PRNGKey(0), (1, 8))
    assert kernels.empirical_ntk(apply_fn, params, x[:4], batch_size=2).shape == (4, 4)


def test_estimates_scale_as_documented() -> None:
    assert kernels.analytic_bytes(100, 50, itemsize=8)["kernel"] == 100 * 50 * 2 * 8
    cnn = kernels.analytic_bytes(10, image_shape=(32, 32, 3), itemsize=4)
    assert cnn["blocks"] == 10 * 10 * 1024 * 3 * 4
    e = kernels.empirical_ntk_bytes(1000, n_params=10**6, n_outputs=10, batch_size=100)
    assert e["jacobians"] == 200 * 10 * 10**6 * 4


@pytest.mark.parametrize(
    ("explicit", "message"),
    [
        ({"n_train": [128, 70000]}, "n_train=[128, 70000] but mnist has only 60000 train"),
        ({"n_test": 20000}, "use n_test <= 10000"),
        ({"dataset": "digits", "n_train": [2000]}, "digits has only 1437 train"),
        ({"dataset": "imagenet"}, "unknown data set dataset='imagenet'"),
    ],
)
def test_data_set_sizes_and_names_are_checked_with_the_parameters(explicit, message) -> None:
    with pytest.raises(config.ParameterError) as err:
        config.resolve("lee2020/kernels_vs_networks", "cpu", explicit)
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--profile", "smoke", "-p", "n=-1"], "n=-1 must be a positive integer"),
        (["--profile", "smoke", "-p", "n=0"], "n=0 must be a positive integer"),
        (["--profile", "smoke", "-p", "n=2.5"], "expects int"),
        (["--profile", "smoke", "-p", "m=3"], "unknown parameter(s) m"),
        (["--profile", "smoke", "-p", "tolerance=7.0"], "must lie in [0, 1]"),
    ],
)
def test_bad_input_is_refused_and_results_are_untouched(
    project: Path, capsys: pytest.CaptureFixture, args: list[str], message: str
) -> None:
    before = _snapshot(_make_results())
    assert cli.main(["run", *args]) == 2
    assert message in capsys.readouterr().err
    assert _snapshot(_folder(project)) == before


def test_unknown_profile_is_refused_by_start(project: Path) -> None:
    with pytest.raises(config.ParameterError, match="unknown profile 'gpu'.*smoke, cpu, paper"):
        results.start(FAKE, {**config.notebook_defaults(FAKE), "profile": "gpu"})


@pytest.mark.slow
def test_missing_data_set_fails_the_run_and_keeps_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = "lee2020/kernels_vs_networks"
    monkeypatch.setenv("NTKREPRO_DATA", str(tmp_path / "no-data"))  # CIFAR-10 is not there
    monkeypatch.setenv("NTKREPRO_RESULTS", str(tmp_path / "results"))
    earlier = tmp_path / "results" / "smoke" / key
    earlier.mkdir(parents=True)
    (earlier / "claim.json").write_text('{"earlier": true}')
    proc = _cli("run", "--profile", "smoke", "--only", key, "-p", "dataset=cifar10")
    assert proc.returncode == 1
    assert "MissingDatasetError" in proc.stderr and "cifar-10-python.tar.gz" in proc.stderr
    assert (earlier / "claim.json").read_text() == '{"earlier": true}'
    assert not earlier.with_name(earlier.name + ".partial").exists()
