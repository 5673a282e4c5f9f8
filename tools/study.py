"""Run the scaling study on a Ray cluster: plan, launch, status, collect.

  python tools/study.py plan --root=ROOT (--keys=KEY;KEY;... | --select=FILTER | --plan=FILE)
      [--set=config.KEY=VALUE ...] [--processes=N] [--resources=JSON] [--devices=N]
  python tools/study.py launch --root=ROOT --engine=ray [--address=ADDR] [--max_attempts=N]
  python tools/study.py status --root=ROOT [--json]
  python tools/study.py collect --root=ROOT [--out=DIR]
  python tools/fit_scaling_laws.py ROOT

ROOT is a local directory or gs://bucket/path. docs/study.md explains the study runner.
"""

import argparse
import collections
import json
import sys
import time

from dlmjax.study import collect, engine, lock, plan, selection, status

EXIT_BAD_INPUT = 2


def _plan(args) -> int:
    if args.keys is not None:
        keys = selection.split_keys(args.keys)
    elif args.select is not None:
        keys = selection.select(args.select)
    else:
        keys = selection.from_plan_file(args.plan)
    try:
        resources = json.loads(args.resources)
    except json.JSONDecodeError as err:
        raise ValueError(f"--resources={args.resources}: not JSON ({err})") from None
    hosts = plan.Hosts(args.processes, resources, args.devices)
    study, added = plan.plan_study(args.root, keys, overrides=args.set, hosts=hosts,
                                   experiment_file=args.experiment, mfu=args.mfu,
                                   peak_flops=args.peak_flops)
    print(f"planned {len(added)} new run(s); {len(study['runs'])} in {args.root}/study.json")
    meshes = collections.Counter()
    for e in added:
        m = e["mesh"]
        shape = (f"{e['processes']}×{e['devices_per_process']} devices, data={m['data']} "
                 f"fsdp={m['fsdp']} tensor={m['tensor']}")
        meshes[shape] += 1
        if len(added) <= 30:
            print(f"  {e['key']}: {e['steps']} steps, {shape}")
        if e["note"]:
            print(f"  note: {e['key']}: {e['note']}", file=sys.stderr)
        for text in e["warnings"]:
            print(f"  warning: {e['key']}: {text} (the run will fail)", file=sys.stderr)
    if len(added) > 30:
        for shape, count in meshes.most_common():
            print(f"  {count} runs on {shape}")
    t = study["totals"]
    print(f"study: {t['runs']} runs, {t['steps']:,} steps, {t['tokens']:.3g} tokens, "
          f"C = {t['flops']:.3g} FLOPs (non-embedding; {t['flops_with_head']:.3g} with the head)")
    print(f"device time at {t['mfu']:.0%} MFU of {t['peak_flops'] / 1e12:.0f} TFLOP/s per "
          f"device: {t['device_hours']:,.1f} device-hours; the longest run takes "
          f"{t['longest_run_hours']:,.1f} h")
    return 0


def _launch(args) -> int:
    def event(message):
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    def progress(done, failed, total):
        nonlocal last
        if (done, failed) != last:
            last = (done, failed)
            event(f"{done}/{total} done, {failed} failed")

    last = None
    launcher = engine.Launcher(args.root, max_attempts=args.max_attempts,
                               placement=args.placement, retry_failed=args.retry_failed,
                               on_event=event)
    try:
        summary = launcher.run(address=args.address, progress=progress)
    except KeyboardInterrupt:
        event("stopped; launch again to continue")
        return 130
    event(f"{summary['done']}/{summary['total']} done, {summary['failed']} failed; "
          f"{summary['submitted']} attempt(s) submitted by this launch")
    return 0 if summary["done"] == summary["total"] else 1


def _status(args) -> int:
    result = status.study_status(args.root)
    print(json.dumps(result, indent=1) if args.json else status.format_table(result))
    return 0


def _collect(args) -> int:
    manifest = collect.collect(args.root, out=args.out)
    for run in manifest["runs"]:
        print(run["run_dir"])
    print(f"{len(manifest['runs'])} of {manifest['total']} runs finished; fit them with "
          f"python tools/fit_scaling_laws.py {args.out or args.root}", file=sys.stderr)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("plan", help="write the study file")
    p.add_argument("--root", required=True, help="study root (local or gs://)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--keys", help="grid keys separated by ';'")
    which.add_argument("--select", help="filter over the study grid, e.g. noise=uniform,"
                                        "size=L8-D512 (or 'all')")
    which.add_argument("--plan", help="a tools/make_grid.py output file (JSON or CSV)")
    p.add_argument("--set", action="append", default=[], metavar="config.KEY=VALUE",
                   help="config override for every run (repeatable)")
    p.add_argument("--processes", type=int, default=1, help="processes (hosts) per run")
    p.add_argument("--resources", default='{"CPU": 1}',
                   help='Ray resources per process, e.g. {"TPU": 4} or {"GPU": 8}')
    p.add_argument("--devices", type=int, default=0,
                   help="devices per process (default: the TPU/GPU count of --resources, else 1)")
    p.add_argument("--experiment", default="experiments/grid.py",
                   help="experiment file that takes the key (relative to the repository)")
    p.add_argument("--mfu", type=float, default=plan.DEFAULT_MFU,
                   help="model FLOPs utilisation for the device-hour estimate")
    p.add_argument("--peak_flops", type=float, default=plan.DEFAULT_PEAK_FLOPS,
                   help="peak FLOP/s per device (default: TPU v5p bf16)")
    p.set_defaults(run=_plan)

    p = commands.add_parser("launch", help="run every unfinished run; returns when none is left")
    p.add_argument("--root", required=True)
    p.add_argument("--engine", default="ray", choices=["ray"])
    p.add_argument("--address", default=None,
                   help="Ray cluster address (default: RAY_ADDRESS or a running local cluster, "
                        "else start one)")
    p.add_argument("--max_attempts", type=int, default=engine.DEFAULT_MAX_ATTEMPTS,
                   help="attempts per run before it is marked failed")
    p.add_argument("--placement", default="auto", choices=engine.PLACEMENTS,
                   help="placement group strategy of multi-process runs")
    p.add_argument("--retry_failed", action="store_true",
                   help="give failed runs a new set of attempts")
    p.set_defaults(run=_launch)

    p = commands.add_parser("status", help="table (or JSON) of every run")
    p.add_argument("--root", required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=_status)

    p = commands.add_parser("collect", help="list the finished runs for the fitter")
    p.add_argument("--root", required=True)
    p.add_argument("--out", help="also copy config.json and metrics.jsonl of each here")
    p.set_defaults(run=_collect)

    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, ImportError, lock.StudyLocked) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    from dlmjax import errors

    sys.exit(errors.guarded(main))
