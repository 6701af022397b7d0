"""The ntkrepro benchmark suite: ``python -m benchmarks.run`` (``make bench``).

Each benchmark times ntkrepro against a plain reference side by side in one process
(calls interleaved, medians of repeats; see :mod:`ntkrepro.measure`), records peak memory,
and writes ``results/bench/<name>.json`` (machine, versions, settings, every case) and
``results/bench/summary.md`` (one table; the book's performance page can include it).

    python -m benchmarks.run                      # all, default sizes (eNTK at n = 1000, 4000)
    python -m benchmarks.run --quick              # smaller sizes, about a minute
    python -m benchmarks.run --only entk solve    # some benchmarks
    python -m benchmarks.run --only linearized    # train.train_linearized vs train.linearize
    python -m benchmarks.run --only notebooks --rerun-notebooks smoke   # rerun, then read

Absolute times depend on the machine and its load (recorded as load averages); the
ratios are what the targets are about.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import ntkrepro  # noqa: F401  (applies the neural-tangents compatibility layer)
from benchmarks.reference import (
    entk_reference,
    reference_contraction,
    reference_jacobians,
    relu_fcn_kernels,
)
from ntkrepro import config, data, kernels, measure, models, predict, results

BENCHMARKS = ("entk", "analytic", "train", "linearized", "solve", "notebooks")


def _mnist(n: int, factor: int, flatten: bool, seed: int = 0) -> np.ndarray:
    """``n`` MNIST training images, average-pooled by ``factor`` (timings do not depend
    on the pixel values, but real inputs keep the kernels realistic)."""
    x = data.load_task("mnist", n, 10, seed)["x_train"]
    x = data.pool(x, factor) if factor > 1 else x
    return x.reshape(n, -1) if flatten else x


def _case(name: str, ours: dict, ref: dict, target: float | None, **extra) -> dict:
    """One row: speed-up ``ref / ours`` of medians (and of the fastest calls), and whether
    the median ratio meets ``target``."""
    ratio = ref["median_s"] / ours["median_s"]
    return {
        "case": name,
        "ours": ours,
        "reference": ref,
        "ratio": ratio,
        # Fastest calls: less sensitive to a contended machine than medians.
        "ratio_of_min": ref["min_s"] / ours["min_s"],
        "target": None if target is None else f">= {target:g}",
        "met": None if target is None else bool(ratio >= target),
        **extra,
    }


# ---------------------------------------------------------------------------- eNTK


def _entk_models() -> dict[str, tuple[Callable, Callable, int, bool]]:
    """name: (init_fn, apply_fn, pooling factor of MNIST, flatten)."""
    mlp = models.fcn(128, 2, 1)  # 196 -> 128 -> 128 -> 1
    cnn = models.cnn(16, 2, 1, readout="gap")  # 7x7x1, two 3x3 convs, GAP, dense
    return {"mlp": (*mlp[:2], 2, True), "cnn": (*cnn[:2], 4, False)}


def _entk_case(apply_fn, params, x, batch_size: int, repeats: int) -> dict:
    """Times (ours: ``implementation="auto"``; the reference), peak memory and agreement of
    one eNTK case, with the way ``kernels.choose_implementation`` chose (cached: the timed
    calls do not include the choice; its cost is reported)."""
    n = len(x)
    n_params = models.count_params(params)
    t0 = time.perf_counter()
    choice = kernels.choose_implementation(apply_fn, params, x, batch_size=batch_size)
    choice_s = time.perf_counter() - t0
    impl = choice.implementation

    def ours():
        return kernels.empirical_ntk(apply_fn, params, x, batch_size=batch_size)

    def ref():
        return entk_reference(apply_fn, params, x)

    jac = reference_jacobians(apply_fn, params, jnp.asarray(x))

    def contraction():  # the reference's contraction alone: a floor for any method
        return reference_contraction(jac, jac)

    fns = {"ours": ours, "ref": ref, "contraction": contraction}
    times = measure.time_side_by_side(fns, repeats)
    blocks = -(-n // choice.batch_size)
    # Best case for a method that contracts the same float32 Jacobians: free Jacobians
    # and only the upper triangle of blocks (what keeping the Jacobians does).
    floor_s = times["contraction"]["median_s"] * (blocks + 1) / (2 * blocks)
    k_ours, mem_ours = measure.peak_memory_mib(ours)
    k_ref, mem_ref = measure.peak_memory_mib(ref)
    err = float(np.max(np.abs(k_ours - np.asarray(k_ref))) / np.max(np.abs(k_ref)))
    return {
        "times": (times["ours"], times["ref"]),
        "n": n,
        "n_params": n_params,
        "implementation": impl,
        "batch_size": choice.batch_size,
        "estimated_s": choice.estimates,
        "choice_s": choice_s,
        "peak_mib_ours": mem_ours,
        "peak_mib_reference": mem_ref,
        "kernel_mib": n * n * 4 / 2**20,
        "jacobians_mib_reference": n * n_params * 4 / 2**20,
        "max_rel_difference": err,
        "contraction_s": times["contraction"],
        "max_possible_ratio": times["ref"]["median_s"] / floor_s,
        "jacobians_kept": kernels.keeps_jacobians(apply_fn, params, x)
        if impl == "jacobian_contraction"
        else False,
    }


def entk_note(case: dict) -> str:
    """What bounds one eNTK case: with Jacobian contraction, the reference's contraction
    alone limits any method that contracts the same Jacobians in float32."""
    ref, floor = case["reference"]["median_s"], case["contraction_s"]["median_s"]
    head = f"{case['case']}: {case['implementation']}"
    if case["implementation"] != "jacobian_contraction":
        return (
            f"{head} (no Jacobians are contracted, so the reference's contraction, "
            f"{floor:.3g} s of its {ref:.3g} s, does not bound it)"
        )
    kept = ", Jacobians kept" if case["jacobians_kept"] else ""
    return (
        f"{head}{kept}; the reference's contraction alone takes {floor:.3g} s of its "
        f"{ref:.3g} s, so contracting the same Jacobians in float32 (upper triangle only) "
        f"cannot beat it by more than {case['max_possible_ratio']:.2g}x"
    )


def bench_entk(ns: list[int], repeats: int, batch_size: int = 256) -> dict:
    """ntkrepro's eNTK (``implementation="auto"``) vs :func:`benchmarks.reference.entk_reference`
    (all Jacobians at once, one contraction). Target per case: never slower than the reference
    (ratio >= 1) and within 1.5x of the floor of contracting the same Jacobians (ratio >=
    ``max_possible_ratio`` / 1.5)."""
    cases = []
    for name, (init_fn, apply_fn, factor, flatten) in _entk_models().items():
        x_all = _mnist(max(ns), factor, flatten)
        _, params = init_fn(jax.random.PRNGKey(0), x_all[:1].shape)
        for n in ns:
            case = _entk_case(apply_fn, params, x_all[:n], batch_size, repeats)
            row = _case(f"{name} n={n}", *case.pop("times"), 1.0, model=name, **case)
            floor_target = row["max_possible_ratio"] / 1.5
            row["target"] = f">= 1 and >= {floor_target:.3g} (floor / 1.5)"
            row["met"] = bool(row["ratio"] >= 1.0 and row["ratio"] >= floor_target)
            cases.append(row)
            print(
                f"  entk {row['case']}: {row['ratio']:.2f}x ({row['implementation']})", flush=True
            )
    notes = [entk_note(c) for c in cases]
    return {
        "cases": cases,
        "notes": notes,
        "settings": {
            "ns": ns,
            "repeats": repeats,
            "batch_size": batch_size,
            "models": {
                "mlp": "models.fcn(128, depth=2, out=1) on 14x14 MNIST (196 inputs)",
                "cnn": "models.cnn(16 channels, depth=2, out=1, GAP) on 7x7 MNIST",
            },
            "reference": "reference.entk_reference: jit(vmap(jacrev)) of all n, one einsum",
        },
    }


# ---------------------------------------------------------------------------- analytic


def bench_analytic(ns: list[int], repeats: int, gap_n: int, depth: int = 5) -> dict:
    """ntkrepro's batched analytic NNGP+NTK of a deep ReLU FCN (float64) vs the numpy
    arc-cosine recursion (:func:`benchmarks.reference.relu_fcn_kernels`); CNN-GAP throughput."""
    cases = []
    x_all = _mnist(max(ns), 1, True)
    _, _, kernel_fn = models.fcn(1, depth, 1)
    for n in ns:
        x = x_all[:n].astype(np.float64)

        def ours(x=x):
            with jax.enable_x64(True):
                return kernels.analytic(kernel_fn, x, batch_size=256)

        def ref(x=x):
            return relu_fcn_kernels(x, None, depth)

        times = measure.time_side_by_side({"ours": ours, "ref": ref}, repeats)
        k_ours, mem_ours = measure.peak_memory_mib(ours)
        k_ref, mem_ref = measure.peak_memory_mib(ref)
        err = float(np.max(np.abs(k_ours["ntk"] - k_ref[1])) / np.max(np.abs(k_ref[1])))
        cases.append(
            _case(
                f"fcn depth {depth} n={n}",
                times["ours"],
                times["ref"],
                None,
                n=n,
                entries_per_s_ours=n * n / times["ours"]["median_s"],
                peak_mib_ours=mem_ours,
                peak_mib_reference=mem_ref,
                max_rel_difference=err,
            )
        )
        print(f"  analytic {cases[-1]['case']}: {cases[-1]['ratio']:.2f}x", flush=True)
    x = _mnist(gap_n, 4, False)
    _, _, gap_fn = models.cnn(1, 2, 1, readout="gap")
    t = measure.time_call(lambda: kernels.analytic(gap_fn, x, batch_size=32), repeats)
    _, mem = measure.peak_memory_mib(lambda: kernels.analytic(gap_fn, x, batch_size=32))
    gap = {
        "case": f"cnn-gap 7x7 depth 2 n={gap_n}",
        "ours": t,
        "n": gap_n,
        "entries_per_s": gap_n * gap_n / t["median_s"],
        "peak_mib_ours": mem,
        "ratio": None,
        "target": None,
        "met": None,
    }
    cases.append(gap)
    print(f"  analytic {gap['case']}: {gap['entries_per_s']:.3g} entries/s", flush=True)
    return {
        "cases": cases,
        "settings": {
            "ns": ns,
            "depth": depth,
            "repeats": repeats,
            "dtype": "float64 for both",
            "reference": "reference.relu_fcn_kernels: numpy arc-cosine recursion, whole n x n",
            "cnn_gap": "models.cnn(depth=2, GAP) on 7x7 MNIST, batch_size 32, float32",
        },
    }


# ---------------------------------------------------------------------------- training


def _train_times(width: int, x, y, batch_size: int, repeats: int) -> tuple[dict, dict]:
    """One epoch of SGD on an FCN of ``width``: scanned (ours) and a Python loop (ref)."""
    import optax

    from ntkrepro import train

    n = len(x)
    steps = n // batch_size
    init_fn, apply_fn, _ = models.fcn(width, 2, y.shape[1])
    _, params = init_fn(jax.random.PRNGKey(0), x.shape)
    opt = optax.sgd(0.1)
    state0 = opt.init(params)
    chunk, plan = train._make_chunk(apply_fn, train.mse, opt, n, batch_size)
    key = jax.random.PRNGKey(1)
    xj, yj = jax.numpy.asarray(x), jax.numpy.asarray(y)

    def scanned():
        return chunk((params, state0), plan(key, 0, steps), xj, yj, steps, 0)

    @jax.jit
    def step(p, s, xb, yb):
        loss, grads = jax.value_and_grad(lambda q: train.mse(apply_fn(q, xb), yb))(p)
        updates, s = opt.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss

    perm = np.random.default_rng(0).permutation(n)

    def loop():
        p, s = params, state0
        for i in range(steps):
            idx = perm[i * batch_size : (i + 1) * batch_size]
            p, s, _ = step(p, s, xj[idx], yj[idx])
        return p

    times = measure.time_side_by_side({"ours": scanned, "ref": loop}, repeats)
    return times["ours"], times["ref"]


def bench_train(repeats: int, n: int = 1024, batch_size: int = 32) -> dict:
    """One jit-compiled epoch (``lax.scan`` over minibatches, what :func:`ntkrepro.train.
    train` runs) vs a Python loop of a jitted step over the same minibatches."""
    cases = []
    task = data.load_task("mnist", n, 10, 0)
    x = data.pool(task["x_train"], 2).reshape(n, -1)
    y = data.one_hot(task["y_train"], 10)
    steps = n // batch_size
    for width in (64, 512):
        ours, ref = _train_times(width, x, y, batch_size, repeats)
        target = 2.0 if width == 64 else None
        name = f"fcn width {width}, {steps} steps of batch {batch_size}"
        cases.append(_case(name, ours, ref, target, width=width, steps=steps))
        print(f"  train {cases[-1]['case']}: {cases[-1]['ratio']:.2f}x", flush=True)
    return {
        "cases": cases,
        "settings": {
            "n": n,
            "batch_size": batch_size,
            "repeats": repeats,
            "target": ">= 2x on the small model (width 64), where dispatch dominates",
            "reference": "jax.jit of one SGD step, called from a Python loop",
        },
    }


# ---------------------------------------------------------------------------- linearized


def _linearized_times(arch: str, n: int, m: int, steps: dict, epochs: int, repeats: int) -> list:
    """``train.train`` on ``train.linearize`` (the reference) vs ``train.train_linearized`` in
    function space (``"ntk"``) and on the Jacobian (``"jacobian"``), on Ortiz-Jiménez et al.'s
    recipe (SGD, momentum 0.9, lr 0.05 decaying linearly to 0 over ``epochs``, batch 128,
    sigmoid BCE). ``steps[arch]``: the steps timed per method (None: all of the ``epochs``);
    ours are also timed at 0 steps (the precompute: eNTK or Jacobians, f(θ_0)). A run of
    ``epochs`` is measured where the timed steps are all of them, else extrapolated: precompute
    + steps x per-step time, per step ``(T(S) - T(0)) / S`` (the reference: ``T(S) / S``)."""
    import optax

    from ntkrepro import train

    task = data.load_task("mnist", n, m, 0, binary=[0, 1, 2, 3, 4])
    flat = arch == "mlp"
    x = data.flatten(task["x_train"]) if flat else task["x_train"]
    x_eval = data.flatten(task["x_test"]) if flat else task["x_test"]
    y = task["y_train"].astype(np.float32)[:, None]
    init_fn, apply_fn, _ = models.ortiz2021(arch)
    _, params = init_fn(jax.random.PRNGKey(0), x.shape)
    f_lin = train.linearize(apply_fn, params)
    batch = min(128, n)
    full = epochs * max(1, n // batch)
    timed = {name: min(k or full, full) for name, k in steps[arch].items()}
    optimizer = optax.sgd(optax.linear_schedule(0.05, 0.0, full), momentum=0.9)
    recipe = dict(optimizer=optimizer, loss="bce", batch_size=batch, progress=False)
    recipe["key"] = jax.random.PRNGKey(1)
    # What the notebooks run: on CPU, convolutions train faster unrolled.
    ref_kw = dict(unroll=True, chunk_size=4) if arch == "lenet" else {}

    def ours(method, k):
        def run():
            kw = dict(recipe, method=method, steps=k)
            return train.train_linearized(apply_fn, params, x, y, x_eval, **kw).f_eval

        return run

    def ref(k=timed["ref"]):
        return train.train(f_lin, params, x, y, steps=k, **recipe, **ref_kw).params

    fns = {"ref": lambda: ref()}
    for method in ("ntk", "jacobian"):
        fns[method], fns[f"{method}_pre"] = ours(method, timed[method]), ours(method, 0)
    times = measure.time_side_by_side(fns, repeats)
    ref_step = times["ref"]["median_s"] / timed["ref"]
    reference = _total(times["ref"], 0.0, ref_step, full, timed["ref"])
    cases = []
    for method in ("ntk", "jacobian"):
        pre = times[f"{method}_pre"]["median_s"]
        step = max(times[method]["median_s"] - pre, 0.0) / timed[method]
        # Agreement after the steps timed for both (or the fewer of them).
        k = min(timed[method], timed["ref"])
        want = np.asarray(jax.jit(f_lin)(ref(k), x_eval))
        diff = np.max(np.abs(np.asarray(ours(method, k)()) - want)) / np.max(np.abs(want))
        name = f"{arch} {method}: {epochs} epochs = {full} steps"
        extrapolated = timed[method] < full or timed["ref"] < full
        cases.append(
            _case(
                name + (" (extrapolated)" if extrapolated else ""),
                _total(times[method], pre, step, full, timed[method]),
                reference,
                10.0 if method == "ntk" else None,
                model=arch,
                method=method,
                n_train=n,
                n_eval=m,
                n_params=models.count_params(params),
                steps=full,
                timed_steps_ours=timed[method],
                timed_steps_reference=timed["ref"],
                measured_s_ours=times[method]["median_s"],
                measured_s_reference=times["ref"]["median_s"],
                extrapolated=extrapolated,
                precompute_s=pre,
                per_step_ms_ours=1e3 * step,
                per_step_ms_reference=1e3 * ref_step,
                max_rel_difference=float(diff),
            )
        )
        print(f"  linearized {cases[-1]['case']}: {cases[-1]['ratio']:.2f}x", flush=True)
    return cases


def _total(measured: dict, pre: float, step: float, full: int, timed: int) -> dict:
    """The time of ``full`` steps: measured if ``timed == full``, else precompute + steps x
    per-step time (median and fastest alike)."""
    if timed == full:
        return measured
    t = pre + full * step
    return {"median_s": t, "min_s": t, "extrapolated_from_steps": timed}


def linearized_note(case: dict) -> str:
    how = "extrapolated from per-step times" if case["extrapolated"] else "measured"
    step = case["per_step_ms_ours"]
    # T(S) - T(0) can vanish in the precompute's timing noise when the steps cost little.
    ours = f"{step:.3g} ms/step" if step > 0 else "steps within the precompute's timing noise"
    return (
        f"{case['case']}: precompute {case['precompute_s']:.3g} s, then "
        f"{ours} vs {case['per_step_ms_reference']:.3g} ms/step "
        f"for train.train on train.linearize (timed {case['timed_steps_ours']} and "
        f"{case['timed_steps_reference']} steps; totals {how}); eval outputs agree with the "
        f"reference's to {case['max_rel_difference']:.1e} (relative)"
    )


def bench_linearized(quick: bool, repeats: int, epochs: int = 100) -> dict:
    """``train.train_linearized`` (eNTK in function space; tangent features) vs ``train.train``
    on ``train.linearize``, for Ortiz-Jiménez et al.'s MLP and LeNet at CPU sizes."""
    n, m = (256, 128) if quick else (1000, 500)
    # Steps timed (None: all): the slow ones are extrapolated from fewer steps.
    steps = {
        "mlp": {"ref": None, "ntk": None, "jacobian": 20 if quick else 100},
        "lenet": {"ref": 10 if quick else 50, "ntk": None, "jacobian": 10 if quick else 50},
    }
    cases = []
    for arch in ("mlp", "lenet"):
        cases += _linearized_times(arch, n, m, steps, epochs, 1 if quick else repeats)
    return {
        "cases": cases,
        "notes": [linearized_note(c) for c in cases],
        "settings": {
            "n_train": n,
            "n_eval": m,
            "timed_steps": steps,
            "epochs": epochs,
            "repeats": 1 if quick else repeats,
            "recipe": "SGD momentum 0.9, lr 0.05 linearly to 0, batch 128, sigmoid BCE (ortiz2021)",
            "models": "models.ortiz2021('mlp'): 784-100-100-1; models.ortiz2021('lenet')",
            "reference": "train.train(train.linearize(apply_fn, params0), ...): a jvp per step "
            "(LeNet: unroll=True, chunk_size=4, as the notebooks run it)",
            "extrapolation": "T(precompute) + steps x per-step time, per step (T(S) - T(0)) / S "
            "for ours and T(S) / S for the reference, S the timed steps",
            "target": ">= 10x for the function-space path at 100 epochs, precompute included",
        },
    }


# ---------------------------------------------------------------------------- kernel solve


def bench_solve(ns: list[int], repeats: int, diag_reg: float = 1e-4) -> dict:
    """``predict.kernel_regression`` (float64 Cholesky) vs scipy's ``cho_factor`` +
    ``cho_solve`` (parity expected) and vs sklearn's ``KernelRidge`` on the same kernel."""
    import scipy.linalg
    from sklearn.kernel_ridge import KernelRidge

    cases = []
    m = 500
    task = data.load_task("mnist", max(ns), m, 0, flatten=True)
    y_all = data.one_hot(task["y_train"], 10)
    for n in ns:
        x, xt = task["x_train"][:n], task["x_test"]
        k, _ = relu_fcn_kernels(x, None, 2)
        ks, _ = relu_fcn_kernels(xt, x, 2)
        y = y_all[:n]
        reg = diag_reg * np.trace(k) / n

        def ours(k=k, ks=ks, y=y):
            return predict.kernel_regression(k, ks, y, diag_reg)

        def scipy_ref(k=k, ks=ks, y=y, reg=reg):
            factor = scipy.linalg.cho_factor(k + reg * np.eye(len(k)), lower=True)
            return ks @ scipy.linalg.cho_solve(factor, y)

        def sklearn_ref(k=k, ks=ks, y=y, reg=reg):
            return KernelRidge(alpha=reg, kernel="precomputed").fit(k, y).predict(ks)

        times = measure.time_side_by_side(
            {"ours": ours, "scipy": scipy_ref, "sklearn": sklearn_ref}, repeats
        )
        p_ours, mem = measure.peak_memory_mib(ours)
        diff = float(np.max(np.abs(p_ours - sklearn_ref())))
        for other, target in (("scipy", 0.9), ("sklearn", None)):
            cases.append(
                _case(
                    f"n={n} vs {other}",
                    times["ours"],
                    times[other],
                    target,
                    n=n,
                    peak_mib_ours=mem,
                    max_abs_difference_to_sklearn=diff,
                )
            )
            print(f"  solve {cases[-1]['case']}: {cases[-1]['ratio']:.2f}x", flush=True)
    return {
        "cases": cases,
        "settings": {
            "ns": ns,
            "n_test": m,
            "outputs": 10,
            "diag_reg": diag_reg,
            "repeats": repeats,
            "kernel": "NNGP of a depth-2 ReLU FCN on MNIST (float64)",
            "target": "parity with scipy (ratio >= 0.9); sklearn reported, no target",
        },
    }


# ---------------------------------------------------------------------------- notebooks

NOTEBOOK_TARGETS = {
    "cpu": {"per_notebook_s": 300.0, "total_s": 3600.0},
    "smoke": {"total_s": 600.0},
}


def bench_notebooks(profiles: list[str], rerun: list[str]) -> dict:
    """Wall time of every figure notebook, from ``runtime_s`` in the provenance of
    ``results/<profile>/<paper>/<figure>/claim.json`` (written by ``ntkrepro run``);
    ``rerun`` profiles are recomputed first (``ntkrepro run --force``)."""

    for profile in rerun:
        subprocess.run(
            [sys.executable, "-m", "ntkrepro.tooling.cli", "run", "--profile", profile, "--force"],
            check=True,
        )
    cases, totals = [], {}
    for profile in profiles:
        total, missing = 0.0, []
        for key in config.figures():
            folder = config.results_root() / profile / key
            try:
                record = results.read_claim(folder)
            except ValueError:
                missing.append(key)
                continue
            runtime = float(record["provenance"]["runtime_s"])
            total += runtime
            limit = NOTEBOOK_TARGETS.get(profile, {}).get("per_notebook_s")
            cases.append(
                {
                    "case": f"{profile} {key}",
                    "profile": profile,
                    "figure": key,
                    "runtime_s": runtime,
                    "started": record["provenance"].get("started"),
                    "device": record["provenance"].get("device"),
                    "state": results.result_state(key, profile)[0],
                    "target": None if limit is None else f"<= {limit:g} s",
                    "met": None if limit is None else runtime <= limit,
                }
            )
        limit = NOTEBOOK_TARGETS.get(profile, {}).get("total_s")
        totals[profile] = {
            "total_s": total,
            "figures": len(config.figures()) - len(missing),
            "missing": missing,
            "target": None if limit is None else f"<= {limit:g} s",
            "met": None if limit is None or missing else total <= limit,
        }
        cases.append(
            {
                "case": f"{profile} all notebooks",
                "runtime_s": total,
                "target": totals[profile]["target"],
                "met": totals[profile]["met"],
                "missing": missing,
            }
        )
    return {
        "cases": cases,
        "settings": {
            "profiles": profiles,
            "rerun": rerun,
            "totals": totals,
            "source": "runtime_s in results/<profile>/<paper>/<figure>/claim.json",
            "targets": NOTEBOOK_TARGETS,
        },
    }


# ---------------------------------------------------------------------------- driver


def write(name: str, result: dict, started: str, seconds: float, out: Path) -> Path:
    record = {
        "name": name,
        "started": started,
        "runtime_s": round(seconds, 2),
        "machine": measure.machine(),
        **result,
    }
    path = out / f"{name}.json"
    results.atomic_write(path, (json.dumps(record, indent=1, default=float) + "\n").encode())
    return path


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--only", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS))
    ap.add_argument("--quick", action="store_true", help="smaller sizes (eNTK at n <= 1000)")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats per case (median)")
    ap.add_argument("--profiles", nargs="+", default=["cpu", "smoke"], help="notebook profiles")
    ap.add_argument(
        "--rerun-notebooks", nargs="*", default=[], metavar="PROFILE", help="rerun these first"
    )
    ap.add_argument("--out", type=Path, default=None, help="default: results/bench")
    return ap


def main(argv: list[str] | None = None) -> int:
    from benchmarks import report

    args = parser().parse_args(argv)
    out = args.out or config.results_root() / "bench"
    # eNTK sizes: those of the cpu notebooks (200, 500, 1000, 1500 inputs) and one larger
    ns = [200, 500, 1000] if args.quick else [200, 500, 1000, 1500, 4000]
    jobs = {
        "entk": lambda: bench_entk(ns, args.repeats),
        "analytic": lambda: bench_analytic(
            [500, 1000] if args.quick else [1000, 4000], args.repeats, 32 if args.quick else 64
        ),
        "train": lambda: bench_train(args.repeats),
        "linearized": lambda: bench_linearized(args.quick, args.repeats),
        "solve": lambda: bench_solve(
            [500, 1000] if args.quick else [1000, 2000, 4000], args.repeats
        ),
        "notebooks": lambda: bench_notebooks(args.profiles, args.rerun_notebooks),
    }
    for name in args.only:
        print(f"{name} ...", flush=True)
        started = dt.datetime.now(dt.UTC).isoformat()
        t0 = time.perf_counter()
        result = jobs[name]()
        result["settings"]["quick"] = args.quick
        path = write(name, result, started, time.perf_counter() - t0, out)
        print(f"  wrote {path}", flush=True)
    summary = report.markdown(out)
    results.atomic_write(out / "summary.md", summary.encode())
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
