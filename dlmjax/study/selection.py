"""Which grid points a study runs: a list of keys, a filter over the study grid, or a plan file.

Filters are `field=value` terms joined by commas over the key fields noise, size, batch and lr;
`|` separates alternatives: `noise=masked|uniform,size=L8-D512,batch=64`. `all` selects all
510 points. Plan files are the JSON (`{"runs": [{"key": ...}, ...]}`) or CSV (a `key` column)
that tools/make_grid.py writes.
"""

import csv
import io
import json

from dlmjax import fs
from dlmjax.scaling import grid

FILTER_FIELDS = ("noise", "size", "batch", "lr")


def split_keys(text: str) -> list[str]:
    """"KEY;KEY;..." -> [KEY, ...] (grid keys contain commas, so ';' separates them)."""
    keys = [k.strip() for k in text.split(";") if k.strip()]
    if not keys:
        raise ValueError("--keys is empty; expected KEY;KEY;...")
    return keys


def _matches(point: grid.GridPoint, field: str, values: list[str]) -> bool:
    if field == "noise":
        return point.noise in values
    if field == "size":
        return point.size in values
    if field == "batch":
        return point.batch in [int(v) for v in values]
    return point.lr in [float(v) for v in values]


def select(text: str) -> list[str]:
    """Keys of the study-grid points matching a filter (module doc)."""
    points = grid.study_grid()
    if text.strip() == "all":
        return [p.key for p in points]
    terms = []
    for term in text.split(","):
        field, sep, values = term.strip().partition("=")
        if not sep or field not in FILTER_FIELDS or not values:
            raise ValueError(f"--select term {term!r}: expected FIELD=VALUE[|VALUE...] with "
                             f"FIELD one of {FILTER_FIELDS}, or 'all'")
        terms.append((field, values.split("|")))
    try:
        chosen = [p for p in points if all(_matches(p, f, v) for f, v in terms)]
    except ValueError as err:
        raise ValueError(f"--select={text}: {err}") from None
    if not chosen:
        raise ValueError(f"--select={text} matches none of the {len(points)} study grid points")
    return [p.key for p in chosen]


def from_plan_file(path: str) -> list[str]:
    """Keys of a tools/make_grid.py output file (JSON or CSV)."""
    if not fs.isfile(path):
        raise FileNotFoundError(f"--plan file {path} does not exist")
    text = fs.read_text(path)
    try:
        rows = json.loads(text)["runs"] if text.lstrip().startswith("{") else list(
            csv.DictReader(io.StringIO(text)))
        keys = [row["key"] for row in rows]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a tools/make_grid.py plan (JSON with runs[].key, or CSV "
                         f"with a key column): {err}") from None
    if not keys:
        raise ValueError(f"{path}: the plan lists no runs")
    return keys
