"""Coverage of every bootstrap scheme's 95% intervals on seeded synthetic studies.

    .venv/bin/python tools/bootstrap_coverage.py --studies=100 --n_boot=200

Each study is one run per size with lognormal AR(1) noise on its logged ELBO (see
dlmjax/scaling/coverage.py); prints, per scheme, the share of studies whose interval holds the
noise-free D* and L* exponents.
"""

import os
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_STUDIES = flags.DEFINE_integer("studies", 100, "Seeded synthetic studies.")
_N_BOOT = flags.DEFINE_integer("n_boot", 200, "Bootstrap resamples per study.")
_SIGMA = flags.DEFINE_float("sigma", 0.02, "Noise sd of log ELBO per record.")
_PHI = flags.DEFINE_float("phi", 0.5, "AR(1) correlation of the noise between records.")
_SEED = flags.DEFINE_integer("seed", 1000, "Seed of the first study.")


def main(argv):
    del argv
    from dlmjax.scaling import coverage

    start = time.perf_counter()
    rates = coverage.coverage(_STUDIES.value, sigma=_SIGMA.value, phi=_PHI.value,
                              n_boot=_N_BOOT.value, seed=_SEED.value)
    true_d, true_l = coverage.truth()
    print(f"{_STUDIES.value} studies, n_boot {_N_BOOT.value}, sigma {_SIGMA.value}, "
          f"phi {_PHI.value}; truth D* exponent {true_d:.4f}, L* exponent {true_l:.4f}")
    print("| scheme | D* exponent coverage | L* exponent coverage |\n|---|---|---|")
    for scheme, (d, l) in rates.items():
        print(f"| {scheme} | {d:.2f} | {l:.2f} |")
    print(f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    app.run(main)
