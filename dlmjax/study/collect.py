"""The finished runs of a study, in the form the scaling fitter reads.

A finished run's workdir already is a fitter run directory (config.json, metrics.jsonl); what
the fitter must not see are the unfinished and failed ones next to them. `collect` writes
ROOT/finished_runs.json listing the finished workdirs, and tools/fit_scaling_laws.py given the
study root reads exactly those. With `out`, it also copies each finished run's config.json and
metrics.jsonl to out/<name>/ (a local copy of a study in a bucket).
"""

import time

from dlmjax import fs, rundir
from dlmjax.study import attempts, layout, plan

MANIFEST_VERSION = 1


def finished_entries(root: str) -> list[dict]:
    """Entries whose run is recorded done and whose metrics reach the last step."""
    study = plan.load_study(root)
    return [e for e in study["runs"]
            if attempts.load_run_state(root, e)["state"] == "done"
            and attempts.last_logged_step(e["workdir"]) >= e["steps"]]


def collect(root: str, out: str | None = None) -> dict:
    """Writes ROOT/finished_runs.json (and the copies under `out`); returns the manifest."""
    entries = finished_entries(root)
    run_dirs = [e["workdir"] for e in entries]
    if out is not None:
        run_dirs = []
        for e in entries:
            target = fs.join(out, e["name"])
            fs.makedirs(target)
            for name in (rundir.CONFIG_FILE, rundir.METRICS_FILE):
                fs.copy(fs.join(e["workdir"], name), fs.join(target, name))
            run_dirs.append(fs.absolute(target))
    manifest = {"version": MANIFEST_VERSION, "collected": time.time(),
                "total": len(plan.load_study(root)["runs"]),
                "runs": [{"key": e["key"], "run_dir": d, "steps": e["steps"]}
                         for e, d in zip(entries, run_dirs)]}
    attempts.write_json(layout.finished_file(root), manifest)
    return manifest
