"""Fit the scaling laws of finished runs and write the report (CSV, markdown, PNG).

  python tools/fit_scaling_laws.py RUN_DIR... [--out DIR] [--budgets 1e18,3e18] [--n_boot N]

A RUN_DIR without config.json is searched for runs below it.
"""

import argparse
import sys

from dlmjax.scaling import curves, report, runs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    parser.add_argument("--out", default="scaling_report", help="output directory")
    parser.add_argument("--budgets", help="comma-separated FLOP budgets (default: automatic)")
    parser.add_argument("--n_boot", type=int, default=10_000, help="bootstrap resamples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--metric", default="elbo", choices=("elbo", "eval_elbo", "loss"))
    parser.add_argument("--ema_gamma", type=float, default=curves.EMA_GAMMA)
    parser.add_argument("--scheme", default="run",
                        choices=("run", "residuals", "budgets", "both"),
                        help="bootstrap of the intervals: run-level (default) or a point scheme "
                             "(see docs/science.md)")
    parser.add_argument("--delta", default="robust", choices=("robust", "paper"),
                        help="Huber δ of the power laws: Huber's rule, or the study's (δ = 1)")
    parser.add_argument("--approach3_window", type=float, default=report.APPROACH3_WINDOW,
                        help="Approach 3 fits the points within this factor of each budget's "
                             "M* (inf: every point)")
    parser.add_argument("--no_plots", action="store_true")
    args = parser.parse_args(argv)
    if not args.approach3_window >= 1.0:
        parser.error(f"--approach3_window must be >= 1, got {args.approach3_window}")
    budgets = [float(b) for b in args.budgets.split(",")] if args.budgets else None
    result = report.build_report(runs.find_run_dirs(args.run_dirs), args.out, budgets=budgets,
                                 n_boot=args.n_boot, seed=args.seed, metric=args.metric,
                                 ema_gamma=args.ema_gamma, scheme=args.scheme,
                                 delta=None if args.delta == "robust" else "paper",
                                 approach3_window=args.approach3_window,
                                 make_plots=not args.no_plots)
    for path in result["files"]:
        print(path)
    for note in result["notes"]:
        print("note:", note, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
