"""A device mesh that fits a run: every data-parallel device gets a whole share of the batch.

A run asks for `processes` hosts of `devices_per_process` devices. Its (micro-)batch of B
sequences must split evenly over the data-parallel devices, so a batch of 8 cannot use 64 of
them. The fit, in order of preference:
1. all requested devices, the leftover factor going to tensor parallelism within a host
   (it must divide the heads; the trainer then uses the fsdp_tp rules);
2. fewer processes (hosts), halving the device count, until 1 fits.
Data parallelism goes to the 'fsdp' axis (parameters and optimizer state sharded) as far as it
divides d_model, the rest to 'data' (replicated).
"""

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class MeshFit:
    processes: int
    devices_per_process: int
    data: int
    fsdp: int
    tensor: int
    note: str = ""  # why the fit differs from what was asked, if it does

    @property
    def devices(self) -> int:
        return self.processes * self.devices_per_process

    @property
    def strategy(self) -> str:
        return "fsdp_tp" if self.tensor > 1 else "fsdp"

    def config_overrides(self) -> dict:
        """Dotted config keys for the trainer."""
        return {"mesh.data": self.data, "mesh.fsdp": self.fsdp, "mesh.tensor": self.tensor,
                "mesh.strategy": self.strategy, "mesh.num_devices": self.devices}


def _divisors(n: int) -> list[int]:
    return [k for k in range(1, n + 1) if n % k == 0]


def _fit_on(processes, devices_per_process, micro_batch, heads, d_model):
    """The fit on exactly these devices, or None."""
    devices = processes * devices_per_process
    for tensor in _divisors(devices_per_process):  # smallest tensor-parallel factor first
        dp = devices // tensor
        if micro_batch % dp or heads % tensor:
            continue
        fsdp = math.gcd(dp, d_model)
        return MeshFit(processes, devices_per_process, dp // fsdp, fsdp, tensor)
    return None


def fit_mesh(*, batch: int, microbatches: int, heads: int, d_model: int, processes: int,
             devices_per_process: int) -> MeshFit:
    """The mesh of a run (module doc); ValueError when not even one process fits."""
    for name, value in (("batch", batch), ("microbatches", microbatches), ("heads", heads),
                        ("d_model", d_model), ("processes", processes),
                        ("devices_per_process", devices_per_process)):
        if int(value) < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if batch % microbatches:
        raise ValueError(f"microbatches={microbatches} does not divide batch={batch}")
    micro_batch = batch // microbatches
    wanted = processes
    while processes >= 1:
        if batch % processes == 0:  # every process feeds an equal share of the batch
            fit = _fit_on(processes, devices_per_process, micro_batch, heads, d_model)
            if fit is not None:
                if processes == wanted:
                    return fit
                note = (f"a (micro-)batch of {micro_batch} sequences does not fill "
                        f"{wanted}×{devices_per_process} devices: runs on {processes} "
                        f"process(es)")
                return dataclasses.replace(fit, note=note)
        processes = processes // 2 if processes > 1 else 0
    raise ValueError(f"no mesh fits a (micro-)batch of {micro_batch} sequences with {heads} heads "
                     f"on hosts of {devices_per_process} devices")
