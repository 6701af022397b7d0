"""Parameters, profiles, seeds and result writing (ntkrepro.config)."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from ntkrepro import config, results, run
from ntkrepro.config import ParameterError

KEY = "lee2020/kernels_vs_networks"


def test_profiles_cover_every_notebook_and_name_only_declared_parameters():
    table = config.load_profiles()
    for key in run.figures():
        assert key in table, f"{key} has no profile table"
        defaults = config.notebook_defaults(key)
        assert defaults["profile"] == "cpu", f"{key}: the notebook default must be cpu"
        for profile in ("smoke", "paper", "bounds"):
            assert profile in table[key], f"{key} lacks [{profile}]"
        for profile, overrides in table[key].items():
            unknown = set(overrides) - set(defaults)
            assert not unknown, f"{key}.{profile} names undeclared parameters {unknown}"
            if profile in config.PROFILES:
                config.resolve(key, profile, {})  # every profile validates


def test_profile_overrides_defaults_and_explicit_values_win():
    smoke = config.resolve(KEY, "smoke", {})
    cpu = config.resolve(KEY, "cpu", {})
    assert smoke["steps"] < cpu["steps"]
    assert cpu["steps"] == config.notebook_defaults(KEY)["steps"]
    assert config.resolve(KEY, "smoke", {"steps": 7})["steps"] == 7


@pytest.mark.parametrize(
    ("profile", "explicit", "message"),
    [
        ("nope", {}, "unknown profile 'nope'"),
        ("cpu", {"bogus": 1}, "unknown parameter(s) bogus"),
        ("cpu", {"n_test": "many"}, "expects int"),
        ("cpu", {"widths": 64}, "a list"),
        ("cpu", {"n_test": 0}, "must be a positive integer"),
        ("cpu", {"n_train": [128, -1]}, "must be a positive integer"),
        ("cpu", {"seed": -1}, "non-negative"),
        ("cpu", {"tolerance": float("nan")}, "not finite"),
        ("cpu", {"lr_fraction": 50.0}, "must lie in"),
        ("cpu", {"depth": True}, "expects int"),
        ("cpu", {"widths": []}, "is empty"),
    ],
)
def test_bad_parameters_name_the_problem(profile, explicit, message):
    with pytest.raises(ParameterError) as err:
        config.resolve(KEY, profile, explicit)
    assert message in str(err.value)


def test_start_reads_papermill_injected_cell(results_dir):
    defaults = config.notebook_defaults(KEY)
    injected = '# Parameters\nprofile = "smoke"\nsteps = 300\n'
    namespace = {**defaults, "profile": "smoke", "In": ["", "...", injected]}
    r = results.start(KEY, namespace)
    # steps was injected explicitly (equal to the cpu default): it wins over smoke's.
    assert r.params["steps"] == 300
    assert r.params["n_test"] == config.load_profiles()[KEY]["smoke"]["n_test"]
    namespace["In"].append("# Parameters\nwidht = 3\n")
    namespace["widht"] = 3
    with pytest.raises(ParameterError, match="widht"):
        results.start(KEY, namespace)


def test_start_without_ipython_catches_stray_globals(results_dir):
    namespace = {**config.notebook_defaults(KEY), "typo_param": 1}
    with pytest.raises(ParameterError, match="typo_param"):
        results.start(KEY, namespace)


def test_seed_keys_depend_on_name_not_order():
    a1 = config.seed_key(0, "init/a")
    b = config.seed_key(0, "init/b")
    a2 = config.seed_key(0, "init/a")
    assert np.array_equal(jax.random.key_data(a1), jax.random.key_data(a2))
    assert not np.array_equal(jax.random.key_data(a1), jax.random.key_data(b))
    assert not np.array_equal(
        jax.random.key_data(config.seed_key(1, "init/a")), jax.random.key_data(a1)
    )
    assert config.seed_int(0, "x") == config.seed_int(0, "x") != config.seed_int(0, "y")


def test_atomic_write_leaves_no_temporary(tmp_path):
    path = tmp_path / "a" / "b.json"
    results.atomic_write(path, b"{}")
    results.atomic_write(path, b'{"x": 1}')
    assert json.loads(path.read_text()) == {"x": 1}
    assert [p.name for p in path.parent.iterdir()] == ["b.json"]


def test_finish_publishes_only_complete_runs(results_dir):
    from ntkrepro.claims import compare

    r = results.start(KEY, {**config.notebook_defaults(KEY), "profile": "smoke"})
    r.save_json("numbers", {"x": [1, 2]})
    assert not r.final_dir.exists(), "results must not appear before finish()"
    r.finish([compare("a", "claim", "x", 1.0, "<=", 2.0)], title="t", scale="s", deviations=[])
    assert (r.final_dir / "claim.json").exists() and not r.dir.exists()
    first = json.loads((r.final_dir / "numbers.json").read_text())
    assert first["provenance"]["parameters"]["profile"] == "smoke"
    modules = results.loaded_modules()
    assert first["provenance"]["code_hash"] == results.code_hash(KEY, modules=modules)
    # A second run that fails before finish() leaves the first results in place.
    r2 = results.start(KEY, {**config.notebook_defaults(KEY), "profile": "smoke"})
    r2.save_json("numbers", {"x": [3]})
    assert json.loads((r.final_dir / "numbers.json").read_text())["data"] == {"x": [1, 2]}
    # ...and the next start() clears the leftover partial folder.
    results.start(KEY, {**config.notebook_defaults(KEY), "profile": "smoke"})
    assert not r2.dir.exists()


def test_arrays_are_saved_without_pickle(results_dir):
    r = results.start(KEY, {**config.notebook_defaults(KEY), "profile": "smoke"})
    path = r.save_arrays("k", kernel=np.eye(3))
    with np.load(path, allow_pickle=False) as z:
        assert np.array_equal(z["kernel"], np.eye(3))
        assert json.loads(z["provenance"].tobytes())["profile"] == "smoke"


def test_save_text_writes_into_the_run_folder_and_refuses_paths(results_dir):
    r = results.start(KEY, {**config.notebook_defaults(KEY), "profile": "smoke"})
    path = r.save_text("table.csv", "a,b\n1,2\n")
    assert path.parent == r.dir and path.read_text() == "a,b\n1,2\n"
    for bad in ("../x.csv", "claim.json", ".hidden", "sub/x.csv"):
        with pytest.raises(ValueError, match="plain file name"):
            r.save_text(bad, "x")
