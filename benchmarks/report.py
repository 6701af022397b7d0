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
    """Rows of one benchmark: case, our median, the reference's, ratio, target, met,
    peak memory (MiB) of ours and of the reference where measured."""
    lines = [
        f"### {record['name']}",
        "",
        "| case | ours (s) | reference (s) | speed-up (medians) | speed-up (fastest) | target "
        "| met | peak MiB ours | peak MiB ref |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for case in record["cases"]:
        ours = _seconds(case, "ours")
        ref = case["reference"]["median_s"] if isinstance(case.get("reference"), dict) else None
        cells = [
            case["case"],
            ours,
            ref,
            case.get("ratio")
            or case.get("entries_per_s")
            and f"{case['entries_per_s']:.3g} entries/s",
            case.get("ratio_of_min"),
            case.get("target"),
            case.get("met"),
            case.get("peak_mib_ours") or case.get("peak_mib"),
            case.get("peak_mib_reference"),
        ]
        lines.append("| " + " | ".join(_fmt(c) for c in cells) + " |")
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
