"""Prints the coordinate-check tables: CompleteP across widths and depths, and the
standard-parametrization control across widths (see dlmjax.model.coord_check).

  python tools/coord_check.py --widths=128,256,512,1024 --depths=2,4,8,16
"""

from absl import app, flags

from dlmjax.model.coord_check import coord_check

_WIDTHS = flags.DEFINE_list("widths", ["128", "256", "512", "1024"], "Widths d (depth 2).")
_DEPTHS = flags.DEFINE_list("depths", ["2", "4", "8", "16"], "Depths L (width 128).")
_STEPS = flags.DEFINE_integer("steps", 10, "LaProp steps at η = 0.3 before measuring.")


def _fmt(values):
    return " ".join(f"{v:6.3f}" for v in values)


def main(argv):
    del argv
    tables = coord_check(widths=tuple(int(w) for w in _WIDTHS.value),
                         depths=tuple(int(n) for n in _DEPTHS.value), steps=_STEPS.value)
    titles = {"width": "CompleteP, depth 2, by width", "depth": "CompleteP, width 128, by depth",
              "width_standard": "standard parametrization (control), depth 2, by width"}
    for sweep, rows in tables.items():
        print(f"== {titles[sweep]}")
        print("size  | logits RMS | Δ layer output RMS (layer 1..L) | init act RMS (layer 1..L)")
        for size, stats in rows.items():
            print(f"{size:5d} | {stats['logits']:10.3f} | {_fmt(stats['delta'])} | "
                  f"{_fmt(stats['init_act'])}")


if __name__ == "__main__":
    app.run(main)
