"""Parameters, profiles, seeds and result writing (ntkrepro.config)."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from ntkrepro import claims, config, files, results
from ntkrepro.config import ParameterError

KEY = "lee2020/kernels_vs_networks"


def test_profiles_cover_every_notebook_and_name_only_declared_parameters():
    table = config.load_profiles()
    for key in config.figures():
        assert key in table, f"{key} has no profile table"
        defaults = config.notebook_defaults(key)
        assert defaults["profile"] == "cpu", f"{key}: the notebook default must be cpu"
        for profile in ("smoke", "paper", "bounds"):
            assert profile in table[key], f"{key} lacks [{profile}]"
        for profile, overrides in table[key].items():
            names = overrides["parameters"] if profile == "blocking" else overrides
            unknown = set(names) - set(defaults)
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
    files.atomic_write(path, b"{}")
    files.atomic_write(path, b'{"x": 1}')
    assert json.loads(path.read_text()) == {"x": 1}
    assert [p.name for p in path.parent.iterdir()] == ["b.json"]


def test_finish_publishes_only_complete_runs(results_dir):
    from ntkrepro.claims import compare
    from ntkrepro.intervals import Estimate

    EST = Estimate(1.0, 0.9, 1.1, "t-interval over 3 seeds", 3)  # noqa: N806
    r = results.start(KEY, {**config.notebook_defaults(KEY), "profile": "smoke"})
    r.save_json("numbers", {"x": [1, 2]})
    assert not r.final_dir.exists(), "results must not appear before finish()"
    r.finish([compare("a", "claim", "x", EST, "<=", 2.0)], title="t", scale="s", deviations=[])
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
    r.save_arrays("k", kernel=np.eye(3))
    with np.load(r.dir / "k.npz", allow_pickle=False) as z:
        assert np.array_equal(z["kernel"], np.eye(3))
        assert json.loads(z["provenance"].tobytes())["profile"] == "smoke"


def test_save_text_writes_into_the_run_folder_and_refuses_paths(results_dir):
    r = results.start(KEY, {**config.notebook_defaults(KEY), "profile": "smoke"})
    assert r.save_text("table.csv", "a,b\n1,2\n") is None  # pages show no paths
    assert (r.dir / "table.csv").read_text() == "a,b\n1,2\n"
    for bad in ("../x.csv", "claim.json", ".hidden", "sub/x.csv"):
        with pytest.raises(ValueError, match="plain file name"):
            r.save_text(bad, "x")


def test_params_read_as_attributes_and_stay_read_only():
    p = config.Params({"n_train": 10, "profile": "cpu"})
    assert p.n_train == p["n_train"] == 10 and dict(p) == {"n_train": 10, "profile": "cpu"}
    with pytest.raises(AttributeError, match="read-only"):
        p.n_train = 5
    with pytest.raises(AttributeError, match="no parameter 'n_trian'; known: n_train"):
        p.n_trian  # noqa: B018
    assert "mappingproxy" not in repr(p) and "10" not in repr(p)


def test_check_takes_its_threshold_by_parameter_name(results_dir):
    from ntkrepro.intervals import Estimate

    small = Estimate(0.01, 0.005, 0.015, "t-interval over 3 seeds", 3)
    r = results.start(KEY, {**config.notebook_defaults(KEY), "profile": "smoke"})
    r.check("a", "claim", small, "<=", "tolerance", name="max_gap")
    (c,) = r.checks
    assert c["threshold"] == r.params.tolerance and c["threshold_parameter"] == "tolerance"
    assert c["check"] == f"max_gap <= tolerance = {r.params.tolerance:g}"
    assert c["verdict"] == "reproduced" and c["interval"] == [0.005, 0.015]
    with pytest.raises(ParameterError, match="'tolerence' is not a parameter"):
        r.check("b", "claim", small, "<=", "tolerence", name="max_gap")
    with pytest.raises(ValueError, match="recorded twice"):
        r.check("a", "claim", small, "<=", "tolerance", name="max_gap")
    with pytest.raises(ValueError, match="recorded twice"):
        r.gate("a", "a gate may not reuse a check's id", 1.0, ">=", "tolerance", name="x")
    with pytest.raises(TypeError, match="95% interval"):
        r.check("c", "claim", 0.01, "<=", "tolerance", name="max_gap")


def test_a_failed_gate_makes_the_figure_invalid_at_this_scale(results_dir):
    from ntkrepro.intervals import Estimate

    r = results.start(KEY, {**config.notebook_defaults(KEY), "profile": "smoke"})
    r.check("a", "claim", Estimate(1.0, 0.9, 1.1, "m", 3), ">=", "tolerance", name="x")
    r.gate("fit", "the network fits its data", 0.5, "<=", "tolerance", name="train_loss")
    r.method_check("m", "an identity", 2.0, "<=", "tolerance", name="err")
    r.finish(deviations=[])
    claim = json.loads((r.final_dir / "claim.json").read_text())
    assert claim["verdict"] == "invalid at this scale"
    assert claim["claims"][0]["failed_gates"] == ["fit"]
    assert claim["claims"][0]["interval_verdict"] == "reproduced"
    assert claim["gates"][0]["verdict"] == "failed"
    assert claim["method_checks"][0]["verdict"] == "failed"
    assert claims.schema_problems(claim) == []


def test_replicates_derive_keys_by_name(results_dir):
    r = results.start(KEY, {**config.notebook_defaults(KEY), "profile": "smoke"})
    assert list(r.replicates) == list(range(r.params.n_seeds))  # smoke: 2
    k0, k1 = r.key_for("init"), r.key_for("init", replicate=1)
    assert (k0 == config.seed_key(r.params.seed, "init")).all()
    assert not (k0 == k1).all()
    assert (k1 == config.seed_key(r.params.seed, "init/replicate1")).all()


def test_finish_derives_title_scale_and_deviations_from_the_notebook_and_paper(results_dir):
    from ntkrepro.intervals import Estimate

    r = results.start(KEY, {**config.notebook_defaults(KEY), "profile": "smoke"})
    r.check("a", "claim", Estimate(0.5, 0.4, 0.6, "m", 3), ">=", "tolerance", name="x")
    r.finish(deviations=["one initialization per width"])
    claim = json.loads((r.final_dir / "claim.json").read_text())
    nb = json.loads(config.notebook_path(KEY).read_text())
    assert "# " + claim["title"] in "".join(nb["cells"][0]["source"])
    paper = config.load_profiles()[KEY]["paper"]
    assert claim["deviations"][-1] == "one initialization per width"
    assert f"dataset mnist (paper: {paper['dataset']})" in claim["deviations"]
    assert all(name in claim["scale"] for name in paper)
    assert claim["verdict"] == "reproduced"
    assert claim["provenance"]["peak_rss_mib"] > 0  # a machine fact: claim.json only


def test_deviations_list_only_what_differs_from_the_paper_profile():
    key = "lee2020/kernels_vs_networks"
    paper = config.load_profiles()[key]["paper"]
    params = {**config.notebook_defaults(key), **paper}
    assert config.paper_deviations(key, params) == []
    params["n_test"] = 7
    assert config.paper_deviations(key, params) == [f"n_test 7 (paper: {paper['n_test']})"]


def test_table_text_markdown_and_csv_agree():
    rows = [{"arch": "FCN", "acc": 0.91234, "reg": None}, {"arch": "CNN, GAP", "acc": 0.5}]
    md, csv_text = results.table_text(rows, ["arch", "acc", "reg"], digits=2)
    lines = md.splitlines()
    assert lines[0] == "| arch | acc | reg |"
    assert lines[2] == "| FCN | 0.91 |  |"
    assert csv_text.splitlines() == ["arch,acc,reg", "FCN,0.91,", '"CNN, GAP",0.50,']
