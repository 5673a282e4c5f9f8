"""`make bench`: the performance report. Each figure is a ratio measured within this process.

Writes bench/latest.json ({key: value}, plus "details" and "machine") and prints every figure
next to bench/baseline.json. --only=key1,key2 measures a subset (the rest are not written).
"""

import json
import os
import platform
import sys
import time

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from dlmjax import benchmarks  # noqa: E402
from dlmjax.benchmarks import protocol  # noqa: E402

FLAGS = flags.DEFINE_string("only", "", "comma-separated figure keys (default: all)")
OUT = flags.DEFINE_string("out", os.path.join(ROOT, "bench", "latest.json"), "report to write")
REPEATS = flags.DEFINE_integer("repeats", 7, "timed calls per figure (median)")
BASELINE = flags.DEFINE_string("baseline", os.path.join(ROOT, "bench", "baseline.json"),
                               "report to compare with")


def _machine():
    import jax

    return {"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "jax": jax.__version__, "backend": jax.default_backend(),
            "cpus": os.cpu_count(), "load_average_1m": os.getloadavg()[0],
            "processor": platform.processor() or platform.machine()}


def _load(path):
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def main(argv):
    del argv
    keys = [k for k in FLAGS.value.split(",") if k] or list(benchmarks.FIGURES)
    unknown = [k for k in keys if k not in benchmarks.FIGURES]
    if unknown:
        print(f"--only: unknown figure(s) {unknown}; known: {list(benchmarks.FIGURES)}",
              file=sys.stderr)
        sys.exit(2)
    protocol.SETTINGS["repeats"] = REPEATS.value
    report = {"figures": {}, "details": {}, "machine": {**_machine(), "repeats": REPEATS.value}}
    for key in keys:
        print(f"== {key}: {benchmarks.DESCRIPTIONS.get(key, '')}", flush=True)
        details = benchmarks.FIGURES[key]()
        report["figures"][key] = details["value"]
        report["details"][key] = details
        print(json.dumps(details, indent=2), flush=True)
    report["machine"]["load_average_1m_end"] = os.getloadavg()[0]
    os.makedirs(os.path.dirname(OUT.value), exist_ok=True)
    with open(OUT.value, "w") as f:
        json.dump(report, f, indent=2)
    baseline = _load(BASELINE.value).get("figures", {})
    print(f"\n{'figure':28s} {'latest':>12s} {'baseline':>12s}  description")
    for key in keys:
        base = baseline.get(key)
        base_text = f"{base:12.4g}" if base is not None else f"{'-':>12s}"
        print(f"{key:28s} {report['figures'][key]:12.4g} {base_text}  "
              f"{benchmarks.DESCRIPTIONS.get(key, '')}")
    print(f"\nwrote {OUT.value}; baseline {BASELINE.value}")


if __name__ == "__main__":
    app.run(main)
