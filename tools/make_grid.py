"""List planned runs: the study grid, an iso-FLOP set for a budget, or the CPU micro study.

  python tools/make_grid.py --study [--noise uniform] [--format csv --out grid.csv]
  python tools/make_grid.py --budget 1e21 --noise masked [--num_sizes 5 --spread 2]
  python tools/make_grid.py --micro --format json --out micro.json

Every row carries the run's key (experiments/grid.py accepts it) and the trainer's config
overrides; JSON output is a launch manifest.
"""

import argparse
import csv
import json
import sys

from dlmjax.scaling import grid, plan


def _row(point: grid.GridPoint) -> dict:
    return {"key": point.key, "noise": point.noise, "size": point.size,
            "params": point.params, "flops_per_token": point.flops_per_token,
            "batch": point.batch, "lr": point.lr, "steps": point.steps,
            "tokens": point.train_tokens, "compute": point.compute,
            "overrides": point.config_overrides()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--study", action="store_true", help="the study's 510-run grid")
    mode.add_argument("--budget", type=float, help="iso-FLOP runs for this compute C (FLOPs)")
    mode.add_argument("--micro", action="store_true", help="the CPU micro study")
    parser.add_argument("--noise", help="noise type (required with --budget; filters --study)")
    parser.add_argument("--num_sizes", type=int, default=5)
    parser.add_argument("--spread", type=float, default=2.0, help="ratio of successive M")
    parser.add_argument("--format", choices=("table", "csv", "json"), default="table")
    parser.add_argument("--out", help="output file (default: stdout)")
    args = parser.parse_args(argv)

    header = {}
    if args.study:
        points = [p for p in grid.study_grid() if args.noise in (None, p.noise)]
    elif args.budget is not None:
        if args.noise is None:
            parser.error("--budget needs --noise")
        iso = plan.plan_iso_flop(args.budget, args.noise, num_sizes=args.num_sizes,
                                 spread=args.spread)
        points = list(iso.points)
        header = {"compute": iso.compute, "noise": iso.noise, "predicted": iso.predicted}
    else:
        micro = plan.plan_micro_study()
        points = list(micro.points)
        header = {"budgets": micro.budgets, "predicted_M": micro.predicted_m,
                  "total_flops_with_embeddings": micro.total_flops}
    rows = [_row(p) for p in points]

    out = open(args.out, "w", newline="") if args.out else sys.stdout
    try:
        if args.format == "json":
            json.dump({**header, "runs": rows}, out, indent=1)
            out.write("\n")
        elif args.format == "csv":
            writer = csv.DictWriter(out, fieldnames=[k for k in rows[0] if k != "overrides"])
            writer.writeheader()
            for row in rows:
                writer.writerow({k: v for k, v in row.items() if k != "overrides"})
        else:
            for k, v in header.items():
                out.write(f"# {k}: {v}\n")
            out.write(f"# {len(rows)} runs\n")
            for row in rows:
                out.write(f"{row['key']:<60} steps={row['steps']:<8} "
                          f"tokens={row['tokens']:.3g} C={row['compute']:.3g}\n")
    finally:
        if args.out:
            out.close()
    return 0


if __name__ == "__main__":
    from dlmjax import errors

    sys.exit(errors.guarded(main))
