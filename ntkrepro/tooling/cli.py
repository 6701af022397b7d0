"""The ``ntkrepro`` command: run figure notebooks under a profile and build the book.

``run`` skips figures whose results are current (same parameters and code, intact files).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ntkrepro import config
from ntkrepro.results import result_state, seal_notebook


def parse_assignment(text: str) -> tuple[str, Any]:
    """``NAME=VALUE`` with VALUE a Python literal (``3``, ``0.1``, ``[64, 256]``, ``mnist``)."""
    if "=" not in text:
        raise config.ParameterError(f"-p {text!r}: write NAME=VALUE, e.g. -p n_test=500")
    name, raw = text.split("=", 1)
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw  # a bare word is a string
    return name.strip(), value


def _ipc_kernel_manager(folder: Path) -> type:
    """A kernel manager using IPC sockets in ``folder`` (over TCP, ipykernel >= 7 warns)."""
    from jupyter_client.manager import AsyncKernelManager

    class IPCKernelManager(AsyncKernelManager):
        def __init__(self, *args, **kwargs):
            kwargs.setdefault("transport", "ipc")
            kwargs.setdefault("ip", str(folder / "kernel"))
            super().__init__(*args, **kwargs)

        async def _async_launch_kernel(self, kernel_cmd, **kw):
            kw.setdefault("preexec_fn", _die_with_parent)
            return await super()._async_launch_kernel(kernel_cmd, **kw)

    return IPCKernelManager


def _die_with_parent() -> None:
    """In the kernel, before exec: die with the runner (Linux), lest it publish results alone."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def execute(key: str, profile: str, explicit: dict[str, Any]) -> Path:
    """Run one notebook with papermill; return its path (a failed run leaves earlier results)."""
    import papermill

    config.resolve(key, profile, explicit)  # fail fast, before starting a kernel
    root = config.repo_root()
    final = config.results_root() / profile / key / f"{key.split('/')[1]}.ipynb"
    # One scratch file per process: concurrent runs (other results folders) must not mix.
    scratch = root / "_build" / "executed" / profile / f"{key}.{os.getpid()}.ipynb"
    scratch.parent.mkdir(parents=True, exist_ok=True)
    os.environ["NTKREPRO_PROGRESS"] = "0"  # the kernel inherits it: no progress logs in pages
    started = time.time()
    sockets = Path(tempfile.mkdtemp(prefix="ntkrepro-kernel-"))
    try:
        papermill.execute_notebook(
            str(config.notebook_path(key)),
            str(scratch),
            parameters={"profile": profile, **explicit},
            cwd=str(root),
            progress_bar=False,
            kernel_name="python3",
            kernel_manager_class=_ipc_kernel_manager(sockets),
        )
        claim = final.parent / config.CLAIM_FILE
        # The claim must be this run's: an earlier run's would be sealed with a wrong page.
        if not claim.is_file() or claim.stat().st_mtime < started - 1:
            raise RuntimeError(f"{key} ran to the end without calling run.finish(...)")
        os.replace(scratch, final)
    finally:
        scratch.unlink(missing_ok=True)
        shutil.rmtree(sockets, ignore_errors=True)
    seal_notebook(final.parent, final)
    return final


def _select(only: Sequence[str] | None) -> list[str]:
    """The figures that ``--only`` names (``PAPER/FIGURE`` or ``PAPER``), in config order."""
    known = config.figures()
    if not only:
        return known
    papers = sorted({k.split("/")[0] for k in known})
    names = [name.strip().strip("/") for name in only]
    if unknown := [n for n in names if n not in known and n not in papers]:
        raise config.ParameterError(
            f"unknown figure(s) or paper(s) {', '.join(unknown)}; papers: {', '.join(papers)}; "
            f"figures (`ntkrepro list` shows them): {', '.join(known)}"
        )
    chosen = {k for k in known for n in names if k == n or k.split("/")[0] == n}
    return [k for k in known if k in chosen]


def verdict_summary(claim: dict[str, Any]) -> str:
    """A figure's verdict and the outcomes of its checks on one line, e.g. ``partly
    reproduced (claim checks: 1 reproduced, 1 invalid at this scale; gates: 1 failed;
    method checks: 2 passed)``; method checks are counted apart from the claim checks."""
    from ntkrepro.claims import CHECK_VERDICTS, FAILED, PASSED

    def counts(items: Sequence[dict], outcomes: Sequence[str]) -> str:
        verdicts = [i.get("verdict") for i in items]
        return ", ".join(f"{verdicts.count(v)} {v}" for v in outcomes if v in verdicts)

    parts = [
        f"{what}: {text}"
        for what, items, outcomes in (
            ("claim checks", claim.get("claims", []), CHECK_VERDICTS),
            ("gates", claim.get("gates", []), (PASSED, FAILED)),
            ("method checks", claim.get("method_checks", []), (PASSED, FAILED)),
        )
        if (text := counts(items, outcomes))
    ]
    verdict = claim.get("verdict", "")
    return f"{verdict} ({'; '.join(parts)})" if parts else verdict


def cmd_list(args: argparse.Namespace) -> int:
    for key in _select(args.only):
        state, reason = result_state(key, args.profile)
        note = ""
        if state in ("current", "stale"):
            claim = config.results_root() / args.profile / key / config.CLAIM_FILE
            note = verdict_summary(json.loads(claim.read_text()))
        if state != "current":
            note = f"{note} ({reason})" if note else reason
        print(f"{key:45s} {args.profile:6s} {state:8s} {note}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    explicit = dict(parse_assignment(a) for a in args.param)
    keys = _select(args.only)
    for key in keys:  # validate everything before running anything
        config.resolve(key, args.profile, explicit)
    failed = []
    for key in keys:
        state, reason = result_state(key, args.profile, explicit)
        if state == "current" and not args.force:
            print(f"[skip] {key}: results are current ({args.profile})")
            continue
        why = f": {reason}" if reason and state != "missing" else ""
        print(f"[run ] {key} ({args.profile}, was {state}{why})", flush=True)
        t0 = time.perf_counter()
        try:
            out = execute(key, args.profile, explicit)
        except Exception as err:  # report and go on with the other figures
            failed.append(key)
            print(f"[FAIL] {key}: {_error_text(err)}", file=sys.stderr)
            continue
        verdict = verdict_summary(json.loads((out.parent / config.CLAIM_FILE).read_text()))
        print(f"[done] {key} in {time.perf_counter() - t0:.0f} s: {verdict} -> {out}")
    if failed:
        print(f"failed: {', '.join(failed)} (earlier results kept)", file=sys.stderr)
        return 1
    return 0


def _error_text(err: Exception) -> str:
    """A failed notebook's error in full (its message names the fix), else its last error line."""
    ename, evalue = getattr(err, "ename", None), getattr(err, "evalue", None)
    if ename and evalue:
        return f"{ename}: {str(evalue).strip()[:3000]}"
    text = str(err).strip().splitlines()
    last = ([ln for ln in text if "Error:" in ln] or text or [""])[-1]
    return f"{type(err).__name__}: {last[:500]}"


def cmd_book(args: argparse.Namespace) -> int:
    from ntkrepro.tooling import book

    root, results = config.repo_root(), config.results_root()
    try:
        html = book.build(args.profile, root, results=results, allow_stale=args.allow_stale)
    except (book.StagingError, book.BuildError) as err:
        print(f"ntkrepro book: {err}", file=sys.stderr)
        return 1
    print(f"book: {html / 'index.html'}")
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    from ntkrepro.tooling import book

    root = config.repo_root()
    dest = Path(args.dest) if args.dest else root / "_build"
    try:
        path = book.archive(book.html_dir(args.profile, root), dest, book.archive_name(root))
    except book.BuildError as err:
        hint = f"(`ntkrepro book --profile {args.profile}`)"
        print(f"ntkrepro publish: {err} {hint}", file=sys.stderr)
        return 1
    print(f"archive: {path} (unpack it and open index.html of its folder)")
    return 0


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="ntkrepro", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    for name, help_ in (
        ("list", "list figures and the state of their results"),
        ("run", "execute figure notebooks with papermill"),
        ("book", "build the HTML book from the results of a profile"),
        ("publish", "pack the built book of a profile into one .tar.gz"),
    ):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--profile", default="cpu", choices=config.PROFILES)
        if name in ("run", "list"):
            help_ = "figures (PAPER/FIGURE) or whole papers (PAPER) only"
            p.add_argument(
                "--only", nargs="+", action="extend", metavar="PAPER[/FIGURE]", help=help_
            )
        if name == "publish":
            p.add_argument("--dest", help="folder of the archive (default: _build)")
        if name == "run":
            p.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE")
            p.add_argument("--force", action="store_true", help="recompute current results")
        if name == "book":
            help_ = "build even if results are stale (flagged on the status page)"
            p.add_argument("--allow-stale", action="store_true", help=help_)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    commands = {"list": cmd_list, "run": cmd_run, "book": cmd_book, "publish": cmd_publish}
    try:
        return commands[args.command](args)
    except config.ParameterError as err:
        print(f"ntkrepro: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
