"""`tools/bench_device.sh`: train-step MFU of a ~1B model on one GPU or TPU, per attention.

The model is L20-D1536 (a study grid size: 0.57B non-embedding + 0.40B embedding parameters,
V = 131072) in bfloat16 at S = 2048; the ceiling is a bfloat16 8192³ matmul measured on the same
chip, interleaved with the steps. Each attention implementation the platform offers is run;
kernels whose features do not cover ours run as "blockwise" and are reported as such.
--smoke runs the same code on the CPU with the tiny model (a check of the script, not a figure).
"""

import json
import sys

import jax
from absl import app, flags

from dlmjax.benchmarks import speed
from dlmjax.model import attention

SMOKE = flags.DEFINE_bool("smoke", False, "tiny model on the CPU: checks the script only")
BATCH = flags.DEFINE_integer("batch", 8, "sequences per step (one device)")
LAYERS = flags.DEFINE_integer("layers", 20, "model.num_layers")
D_MODEL = flags.DEFINE_integer("d_model", 1536, "model.d_model")
REPEATS = flags.DEFINE_integer("repeats", 5, "interleaved timed calls per implementation")


def implementations(platform):
    kernel = {"gpu": ["cudnn"], "tpu": ["splash"]}.get(platform, [])
    return ["dense", "blockwise", *kernel]


def main(argv):
    del argv
    platform = jax.default_backend()
    if SMOKE.value:
        make_run = lambda impl: speed.tiny_run(attention=impl, seq_len=64, batch_size=4)  # noqa: E731
        matmul = dict(matmul_size=512, matmul_dtype="float32")
    elif platform not in ("gpu", "tpu"):
        print(f"bench_device: no GPU or TPU here (jax backend {platform!r}); this benchmark "
              "needs an accelerator. `tools/bench_device.sh --smoke` checks it on the CPU.",
              file=sys.stderr)
        sys.exit(2)
    else:
        def make_run(impl):
            return speed.tiny_run(attention=impl, vocab_size=131072, num_layers=LAYERS.value,
                                  d_model=D_MODEL.value, seq_len=2048, dtype="bfloat16",
                                  remat="full", batch_size=BATCH.value)
        matmul = dict(matmul_size=8192, matmul_dtype="bfloat16")
    impls = implementations(platform)
    runs = {impl: make_run(impl) for impl in impls}
    report = speed.train_mfu(runs, repeats=REPEATS.value, **matmul)
    model = runs["dense"].model
    print(json.dumps({"platform": platform, "device": jax.devices()[0].device_kind,
                      "model": f"L{model.num_layers}-D{model.d_model} V{model.vocab_size} "
                               f"S{model.seq_len} {model.dtype} B{runs['dense'].batch_size}",
                      **report}, indent=2))
    print(f"\nmatmul ceiling: {report['matmul_flops_per_s'] / 1e12:.1f} TFLOP/s")
    for impl in impls:
        ran = attention.resolve(impl, platform)
        print(f"{impl:10s} (runs as {ran:9s}) MFU {report[impl]:.3f}  "
              f"{report[f'{impl}_tokens_per_s']:.0f} tokens/s")


if __name__ == "__main__":
    app.run(main)
