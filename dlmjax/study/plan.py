"""The study file: one entry per run, with everything a launcher needs and nothing it must guess.

An entry holds the grid key, the workdir under the root, processes per run and devices and
resources per process, the mesh that fits the run (dlmjax.study.mesh), the run's size (steps,
tokens, FLOPs) and the trainer command it runs. Planning again on the same root adds new keys
and keeps the existing entries; a key planned again with a different command is an error (its
workdir already belongs to the first one).

Config problems the plan can see (an unknown override key, a value the trainer's validation
rejects) become warnings on the entry, not errors: the trainer is the judge, and such a run fails
at launch after one attempt with the trainer's message.
"""

import dataclasses
import json
import time

from dlmjax import fs
from dlmjax.scaling import flops, grid
from dlmjax.study import experiment, layout, mesh

VERSION = 1
DEFAULT_MFU = 0.4
DEFAULT_PEAK_FLOPS = 459e12  # TPU v5p, bf16 dense, per chip
_MESH_KEYS = ("mesh.data", "mesh.fsdp", "mesh.tensor", "mesh.strategy")


@dataclasses.dataclass(frozen=True)
class Hosts:
    """What one process of a run gets: Ray resources and the devices it drives."""

    processes: int = 1
    resources: dict = dataclasses.field(default_factory=lambda: {"CPU": 1})
    devices_per_process: int = 0  # 0: the TPU or GPU count in `resources`, else 1

    @property
    def devices(self) -> int:
        if self.devices_per_process:
            return self.devices_per_process
        return int(self.resources.get("TPU", 0) or self.resources.get("GPU", 0) or 1)

    @property
    def cpu_only(self) -> bool:
        return not (self.resources.get("TPU") or self.resources.get("GPU"))


def validate_hosts(hosts: Hosts) -> None:
    if hosts.processes < 1:
        raise ValueError(f"--processes must be >= 1, got {hosts.processes}")
    if not isinstance(hosts.resources, dict) or not hosts.resources or not all(
            isinstance(v, (int, float)) and v >= 0 for v in hosts.resources.values()):
        raise ValueError(f"--resources must be a JSON object of non-negative amounts, e.g. "
                         f'{{"TPU": 4}}, got {hosts.resources!r}')
    if hosts.devices_per_process < 0:
        raise ValueError(f"--devices must be >= 0, got {hosts.devices_per_process}")


def _derive(config, num_devices):
    """(derived run, None) or (None, the trainer's config error message)."""
    from dlmjax import config as config_lib

    try:
        return config_lib.derive(config, num_devices), None
    except ValueError as err:
        return None, f"config error: {err}"


def _with_mesh(config, overrides: dict):
    config = experiment.apply_overrides(config, [])[0]
    for dotted, value in overrides.items():
        section, leaf = dotted.split(".")
        config[section][leaf] = value
    return config


def _fit(config, hosts: Hosts, user_mesh: bool):
    if user_mesh:  # the researcher chose the mesh: keep it, the trainer checks it
        return mesh.MeshFit(hosts.processes, hosts.devices, config.mesh.data, config.mesh.fsdp,
                            config.mesh.tensor, note="mesh set by --set")
    single, _ = _derive(_with_mesh(config, {"mesh.data": 1, "mesh.fsdp": 1, "mesh.tensor": 1}),
                        1)
    heads = single.model.heads if single else max(1, int(config.model.num_heads))
    return mesh.fit_mesh(batch=int(config.train.batch_size),
                         microbatches=max(1, int(config.train.microbatches)), heads=heads,
                         d_model=int(config.model.d_model), processes=hosts.processes,
                         devices_per_process=hosts.devices)


def plan_run(root: str, key: str, *, overrides=(), hosts: Hosts = Hosts(),
             experiment_file: str = experiment.DEFAULT_EXPERIMENT) -> dict:
    """The study-file entry of one grid key (module doc)."""
    grid.parse_point(key)  # a clear error for a malformed key before the experiment sees it
    base = experiment.load(experiment_file, key)
    config, warnings = experiment.apply_overrides(base, overrides)
    user_mesh = any(experiment.split_override(o)[0] in _MESH_KEYS for o in overrides)
    fit = _fit(config, hosts, user_mesh)
    mesh_overrides = {} if user_mesh else fit.config_overrides()
    run, problem = _derive(_with_mesh(config, mesh_overrides), fit.devices)
    if problem:
        warnings.append(problem)
    name = layout.run_name(key)
    workdir = layout.workdir(fs.absolute(root), name)
    batch, seq_len = int(config.train.batch_size), int(config.model.seq_len)
    steps = run.steps if run else int(config.train.steps or config.train.tokens // (
        batch * seq_len) or 0)
    tokens = steps * batch * seq_len
    shape = (int(config.model.num_layers), int(config.model.d_model), seq_len)
    command = ["python", "-m", "dlmjax.main", f"--config={experiment_file}:{key}",
               f"--workdir={workdir}", *experiment.trainer_flags(overrides),
               *[f"--config.{k}={v}" for k, v in mesh_overrides.items()]]
    env = ({"JAX_PLATFORMS": "cpu",
            "XLA_FLAGS": f"--xla_force_host_platform_device_count={fit.devices_per_process}"}
           if hosts.cpu_only else {})
    return {
        "key": key, "name": name, "workdir": workdir, "experiment": experiment_file,
        "overrides": list(overrides), "processes": fit.processes,
        "devices_per_process": fit.devices_per_process, "resources": dict(hosts.resources),
        "mesh": {"data": fit.data, "fsdp": fit.fsdp, "tensor": fit.tensor,
                 "strategy": fit.strategy},
        "batch": batch, "seq_len": seq_len, "steps": steps, "tokens": tokens,
        "flops": flops.training_flops(*shape, tokens),
        "flops_with_head": flops.training_flops(*shape, tokens, include_embeddings=True,
                                                vocab_size=int(config.model.vocab_size)),
        "command": command, "env": env, "note": fit.note, "warnings": warnings,
    }


def totals(entries, *, mfu: float, peak_flops: float) -> dict:
    """Compute and device time of the runs; device-hours count FLOPs as the trainer's MFU does
    (non-embedding, deepseek convention)."""
    device_seconds = [e["flops"] / (mfu * peak_flops) for e in entries]
    longest = max(range(len(entries)), key=lambda i: device_seconds[i] / (
        entries[i]["processes"] * entries[i]["devices_per_process"]), default=None)
    return {
        "runs": len(entries), "steps": sum(e["steps"] for e in entries),
        "tokens": sum(e["tokens"] for e in entries), "flops": sum(e["flops"] for e in entries),
        "flops_with_head": sum(e["flops_with_head"] for e in entries),
        "device_hours": sum(device_seconds) / 3600, "mfu": mfu, "peak_flops": peak_flops,
        "longest_run_hours": 0.0 if longest is None else device_seconds[longest] / 3600 / (
            entries[longest]["processes"] * entries[longest]["devices_per_process"]),
    }


def load_study(root: str) -> dict:
    path = layout.study_file(root)
    if not fs.isfile(path):
        raise FileNotFoundError(f"{path} does not exist: plan the study first "
                                "(tools/study.py plan --root=...)")
    try:
        study = json.loads(fs.read_text(path))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if study.get("version") != VERSION or not isinstance(study.get("runs"), list):
        raise ValueError(f"{path}: not a version-{VERSION} dlmjax study file")
    return study


def _same_run(a: dict, b: dict) -> bool:
    fields = ("command", "env", "resources", "processes", "devices_per_process")
    return all(a.get(f) == b.get(f) for f in fields)


def plan_study(root: str, keys, *, overrides=(), hosts: Hosts = Hosts(),
               experiment_file: str = experiment.DEFAULT_EXPERIMENT, mfu: float = DEFAULT_MFU,
               peak_flops: float = DEFAULT_PEAK_FLOPS) -> tuple[dict, list[dict]]:
    """Plans `keys` into ROOT/study.json (added to what is there); returns (study, new entries)."""
    validate_hosts(hosts)
    if not 0 < mfu <= 1 or peak_flops <= 0:
        raise ValueError(f"--mfu must be in (0, 1] and --peak_flops positive, got {mfu}, "
                         f"{peak_flops}")
    for text in overrides:
        experiment.split_override(text)
    keys = list(keys)
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    if duplicates:
        raise ValueError(f"keys listed more than once: {duplicates}")
    existing = load_study(root)["runs"] if fs.isfile(layout.study_file(root)) else []
    by_key = {e["key"]: e for e in existing}
    added = []
    for key in keys:
        entry = plan_run(root, key, overrides=overrides, hosts=hosts,
                         experiment_file=experiment_file)
        if key in by_key:
            if not _same_run(by_key[key], entry):
                raise ValueError(f"{key} is already in {layout.study_file(root)} with another "
                                 "command or resources; plan it under another --root")
            continue
        added.append(entry)
    runs = existing + added
    study = {"version": VERSION, "updated": time.time(), "runs": runs,
             "totals": totals(runs, mfu=mfu, peak_flops=peak_flops)}
    fs.makedirs(root)
    fs.write_text_atomic(layout.study_file(root), json.dumps(study, indent=1))
    return study, added
