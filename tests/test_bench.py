"""The benchmark commands refuse clearly: bench_device.sh without an accelerator, bench.py with an
unknown figure (the benchmarks themselves never run in the test suite)."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, JAX_PLATFORMS="cpu", PYTHON=sys.executable)


def test_bench_device_exits_2_on_a_cpu_only_machine():
    result = subprocess.run([os.path.join(ROOT, "tools", "bench_device.sh")], cwd=ROOT, env=ENV,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "no GPU or TPU" in result.stderr and "--smoke" in result.stderr
    assert "Traceback" not in result.stderr


def test_bench_rejects_an_unknown_figure():
    result = subprocess.run([sys.executable, "tools/bench.py", "--only=cpu_mfu_tiny,mfu_typo"],
                            cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "mfu_typo" in result.stderr and "cpu_mfu_l8_d512_s512" in result.stderr
