"""A markdown summary of ``results/bench/*.json`` (one table per benchmark)."""

from __future__ import annotations

import json
from pathlib import Path


def _fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _seconds(case: dict, key: str) -> float | None:
    part = case.get(key)
    return part.get("median_s") if isinstance(part, dict) else case.get("runtime_s")


def table(record: dict) -> list[str]:
    """Rows of one benchmark: case, our median and the reference's, the speed-up (ratio
    of medians, of fastest calls; for the eNTK also the largest ratio contracting the same
    Jacobians could reach, ``max_possible_ratio``), target, met, peak memory (MiB) of ours and
    of the reference where measured; six columns, so that the table fits the book's text
    width."""
    lines = [
        f"### {record['name']}",
        "",
        "| case | ours / reference (s) | speed-up: medians (fastest) | target | met "
        "| peak MiB ours / ref |",
        "|---|---|---|---|---|---|",
    ]
    for case in record["cases"]:
        ours = _seconds(case, "ours")
        ref = case["reference"]["median_s"] if isinstance(case.get("reference"), dict) else None
        ratio = case.get("ratio")
        speed = (
            f"{_fmt(ratio)} ({_fmt(case.get('ratio_of_min'))})"
            if ratio is not None
            else case.get("entries_per_s") and f"{case['entries_per_s']:.3g} entries/s"
        )
        if case.get("max_possible_ratio") is not None:  # eNTK: the contraction floor beside it
            speed += f"; floor {_fmt(case['max_possible_ratio'])}"
        memory = [case.get("peak_mib_ours") or case.get("peak_mib"), case.get("peak_mib_reference")]
        cells = [
            case["case"],
            f"{_fmt(ours)} / {_fmt(ref)}",
            speed,
            case.get("target"),
            case.get("met"),
            f"{_fmt(memory[0])} / {_fmt(memory[1])}",
        ]
        lines.append("| " + " | ".join(_fmt(c) for c in cells) + " |")
    lines += ["", *(f"- {note}" for note in record.get("notes", []))] if record.get("notes") else []
    machine = record.get("machine", {})
    load = machine.get("load_average_1_5_15")
    lines += [
        "",
        f"Run {record.get('started', '?')} on {machine.get('cpu', '?')} "
        f"({machine.get('cpu_count', '?')} cores, load average "
        f"{'/'.join(f'{x:.1f}' for x in load) if load else '?'}).",
        "",
    ]
    return lines


def markdown(folder: Path) -> str:
    """The summary of every ``<folder>/*.json`` benchmark record."""
    lines = ["## Benchmark results", ""]
    for path in sorted(Path(folder).glob("*.json")):
        lines += table(json.loads(path.read_text()))
    return "\n".join(lines) + "\n"
