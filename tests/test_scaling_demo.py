"""The micro study's design (tools/scaling_demo.py): what the issue asks of it, before it runs."""

import math
import os
import sys

import pytest
from absl import flags

from dlmjax import config as config_lib
from dlmjax import data
from dlmjax.scaling import flops

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "tools"))
import scaling_demo as demo  # noqa: E402

if not flags.FLAGS.is_parsed():
    flags.FLAGS(["test"])


@pytest.mark.parametrize("source", ["synthetic_markov", "synthetic_topics"])
def test_budgets_span_15_decades_and_sizes_cover_each(source):
    budgets = demo.BUDGETS
    assert len(budgets) >= 5 and math.log10(budgets[-1] / budgets[0]) >= 1.5
    points = demo.plan_points(source)
    assert {p.noise for p in points} == {"masked", "uniform"}
    for noise in ("masked", "uniform"):
        mine = [p for p in points if p.noise == noise]
        for c in budgets:
            reach = [flops.flops_per_token(p.num_layers, p.d_model, demo.SEQ_LEN) for p in mine
                     if p.compute >= c]
            assert len(reach) >= 5, (noise, c)      # enough points for each parabola
            if source == "synthetic_markov":        # sizes on both sides of the prior M* = √C
                assert min(reach) < math.sqrt(c) < max(reach), (noise, c)
        # Each run covers its largest budget with the margin the curve's smoothing needs.
        for p in mine:
            m = flops.flops_per_token(p.num_layers, p.d_model, demo.SEQ_LEN)
            served = [c for c in budgets
                      if math.sqrt(c) / demo.FAR <= m <= demo.NEAR * math.sqrt(c)]
            assert p.compute >= demo.MARGIN * max(served) * 0.999


@pytest.mark.parametrize("source", ["synthetic_markov", "synthetic_topics"])
def test_run_configs_derive_and_the_floor_is_known(source):
    point = demo.plan_points(source)[0]
    cfg = demo.point_config(point, source, 4, "successor")
    run = config_lib.derive(cfg, num_devices=1)
    assert run.steps == point.steps and run.model.vocab_size == demo.VOCAB_SIZE
    entropy = data.known_entropy(cfg.data, demo.SEQ_LEN)
    # The demo compares E with H: a row's floor must be H itself (topics), or 0.51% above it.
    assert abs(entropy["row_entropy_per_token"] / entropy["entropy_rate"] - 1) < 0.006


def test_a_run_of_another_source_in_the_output_is_refused(tmp_path, capsys):
    point = demo.plan_points("synthetic_topics")[0]
    topics = demo.point_config(point, "synthetic_topics")
    run_dir = tmp_path / "masked-L1-D8"
    demo._claim(str(run_dir), topics)                      # nothing trained: config.json written
    (run_dir / "checkpoints" / "8").mkdir(parents=True)    # as if trained to step 8
    demo._claim(str(run_dir), topics)                      # the same study resumes
    markov = demo.point_config(point, "synthetic_markov", 4, "successor")
    with pytest.raises(SystemExit) as exit_info:
        demo._claim(str(run_dir), markov)
    assert exit_info.value.code == 2
    assert "data.source: 'synthetic_topics'" in capsys.readouterr().err
