"""Device mesh, logical-axis → mesh-axis rules and the shardings built from them.

Mesh axes: 'data' (pure data parallel, parameters replicated), 'fsdp' (data parallel with
parameters and optimizer state sharded), 'tensor' (heads, MLP and vocabulary split).
The batch is always split over ('data', 'fsdp'). The mesh spans every process's devices.
"""

import contextlib
import math

import flax.linen as nn
import jax
import optax
from jax.sharding import NamedSharding, PartitionSpec

from dlmjax.model import logical_axes

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# One table: logical name -> mesh axes, per strategy. Parameters use 'vocab', 'embed', 'heads',
# 'kv', 'mlp', 'norm', 'layers'; activations use 'batch', 'length', 'act_*'. Names missing from a
# strategy's rules stay unsharded ('layers' always: nn.scan slices it; 'kv' and 'norm' are small).
_BATCH = ("batch", BATCH_AXES)  # tokens [B, L], activations [B, L, ...]
_FSDP = ("embed", "fsdp")  # the D dimension of every weight: embedding [V, D], q [D, H, K],
#                            o [H, K, D], up [D, F], down [F, D], head [D, V]
_TENSOR = (
    ("heads", "tensor"),  # q/k/v [D, H, K], o [H, K, D], QK-norm and sinks [H, K]
    ("mlp", "tensor"),  # up [D, F], down [F, D], up_bias [F]
    ("vocab", "tensor"),  # embedding [V, D], head [D, V]
    ("act_heads", "tensor"),  # q, k, v, attention output [B, L, H, K]
    ("act_mlp", "tensor"),  # MLP hidden [B, L, F]
    ("act_vocab", "tensor"),  # logits [B, L, V]
)
RULES = {
    "dp": (_BATCH,),
    "fsdp": (_BATCH, _FSDP),
    "fsdp_tp": (_BATCH, _FSDP, *_TENSOR),
}


def rules_for(strategy: str):
    if strategy not in RULES:
        raise ValueError(f"unknown sharding strategy {strategy!r}; expected one of {sorted(RULES)}")
    return RULES[strategy]


def make_mesh(data=-1, fsdp=1, tensor=1, devices=None) -> jax.sharding.Mesh:
    """Mesh ('data', 'fsdp', 'tensor') over `devices` (default: all devices of all processes).

    At most one size may be −1: it takes whatever the others leave.
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = {"data": data, "fsdp": fsdp, "tensor": tensor}
    fill = [name for name, size in sizes.items() if size == -1]
    for name, size in sizes.items():
        if size == 0 or size < -1:
            raise ValueError(f"mesh axis {name!r} has size {size}; use a positive size or -1")
    if len(fill) > 1:
        raise ValueError(f"mesh axes {fill} are all -1; at most one axis can fill the devices")
    fixed = math.prod(size for size in sizes.values() if size != -1)
    if fill:
        if len(devices) % fixed:
            raise ValueError(f"mesh axis {fill[0]!r} cannot fill {len(devices)} devices: the other "
                             f"axes multiply to {fixed}, which does not divide it")
        sizes[fill[0]] = len(devices) // fixed
    elif fixed != len(devices):
        raise ValueError(f"mesh sizes {sizes} multiply to {fixed}, not the {len(devices)} devices")
    shape = tuple(sizes[name] for name in MESH_AXES)
    return jax.make_mesh(shape, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3,
                         devices=devices)


def logical_to_shardings(logical_specs, mesh, strategy):
    """NamedShardings for a tree of logical PartitionSpecs (e.g. dlmjax.model.logical_axes)."""
    return nn.logical_to_mesh_sharding(logical_specs, mesh, rules_for(strategy))


def param_shardings(model_cfg, mesh, strategy):
    """NamedShardings of the model's parameters. Create them sharded with
    jax.jit(init_params, static_argnums=1, out_shardings=...) under sharding_context."""
    return logical_to_shardings(logical_axes(model_cfg), mesh, strategy)


def opt_state_shardings(optimizer, abstract_params, param_shardings_tree, mesh):
    """Each moment sharded like its parameter; counts and other scalars replicated."""
    state = jax.eval_shape(optimizer.init, abstract_params)
    return optax.tree_map_params(optimizer, lambda _, sharding: sharding, state,
                                 param_shardings_tree,
                                 transform_non_params=lambda _: replicated(mesh))


def batch_sharding(mesh, ndim=2):
    """Leading (batch) dimension over ('data', 'fsdp'); the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh):
    return NamedSharding(mesh, PartitionSpec())


@contextlib.contextmanager
def sharding_context(mesh, strategy):
    """Trace under this so the model's activation constraints bind to `mesh`."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules_for(strategy)):
        yield

