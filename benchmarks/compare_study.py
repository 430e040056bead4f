"""Does a second run of an experiment give the same table? (issue 14's determinism check)

    python benchmarks/compare_study.py FIRST/results.json SECOND/results.json

Renders both runs' tables the way the report does (every printed digit) and prints the rows that differ,
then the largest absolute difference of any number per section of results.json, so a difference below
the printed precision is still seen, with its size. Timings, paths and stage bookkeeping are left out:
they differ by design. Exit status 0 when the printed tables are equal, 1 when they are not.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from karma_ray.experiment.report import findings, tables

# What says where and how long a run took, not what it computed: top-level sections of results.json,
# keys at any depth (Ray node ids, folders under each run's output), and report tables and columns.
IGNORED = {"output", "eval_report", "stages", "wall_s", "lineage", "karma_experiment"}
WHERE_KEYS = {"node", "role_nodes", "wall_s", "output", "path"}
WHERE_TABLES = {"Stages"}
WHERE_COLUMNS = {"node", "retries"}


def printed(results: dict) -> list[str]:
    """Every line a reader sees: findings, then each table's rows, headed by its title."""
    lines = [f"finding: {f}" for f in findings(results)]
    for title, _note, header, rows in tables(results):
        if title in WHERE_TABLES:
            continue
        keep = [i for i, h in enumerate(header) if h not in WHERE_COLUMNS]
        lines += [f"{title}: " + " | ".join(r[i] for i in keep) for r in rows]
    return lines


def numbers(value, path: str = ""):
    """(path, leaf) for every leaf: numbers as floats; absolute paths (each run's own folders) as one token."""
    if isinstance(value, dict):
        for k, v in value.items():
            if k not in WHERE_KEYS:
                yield from numbers(v, f"{path}/{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from numbers(v, f"{path}[{i}]")
    elif isinstance(value, str):
        yield path, "<a path>" if value.startswith("/") else value
    elif isinstance(value, bool) or value is None:
        yield path, value
    elif isinstance(value, (int, float)):
        yield path, float(value)


def largest_differences(a: dict, b: dict) -> dict[str, tuple[float, str]]:
    """Per top-level section: (largest |a - b| over its numbers, where). inf where the structure differs."""
    out: dict[str, tuple[float, str]] = {}
    for section in sorted(set(a) | set(b)):
        if section in IGNORED:
            continue
        left, right = dict(numbers(a.get(section), section)), dict(numbers(b.get(section), section))
        worst, where = 0.0, ""
        for key in set(left) | set(right):
            x, y = left.get(key, "<missing>"), right.get(key, "<missing>")
            if isinstance(x, float) and isinstance(y, float):
                d = 0.0 if (math.isnan(x) and math.isnan(y)) else abs(x - y)
            else:
                d = 0.0 if x == y else math.inf
            if d > worst:
                worst, where = d, key
        out[section] = (worst, where)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first", type=Path)
    parser.add_argument("second", type=Path)
    args = parser.parse_args(argv)
    a, b = (json.loads(p.read_text()) for p in (args.first, args.second))
    lines_a, lines_b = printed(a), printed(b)
    differing = [(x, y) for x, y in zip(lines_a, lines_b) if x != y]
    if len(lines_a) != len(lines_b):
        print(f"the tables have different shapes: {len(lines_a)} and {len(lines_b)} printed lines")
    print(f"printed lines: {len(lines_a)}; differing: {len(differing)}")
    for x, y in differing:
        print(f"  first : {x}\n  second: {y}")
    print("largest absolute difference of any number, per section of results.json:")
    for section, (d, where) in largest_differences(a, b).items():
        size = "text differs" if math.isinf(d) else f"{d:.3g}"
        print(f"  {section:<18} {size}" + (f"  at {where}" if d else ""))
    return 0 if not differing and len(lines_a) == len(lines_b) else 1


if __name__ == "__main__":
    sys.exit(main())
