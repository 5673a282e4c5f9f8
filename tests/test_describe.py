"""--mode=describe on the 10B experiment: sizes, FLOPs and AOT-compiled memory, no allocation."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_describe_uniform_10b_on_64_fake_devices():
    # describe re-executes itself with 64 fake host devices (mesh.num_devices of the experiment).
    result = subprocess.run(
        [sys.executable, "-m", "dlmjax.main", "--config=experiments/uniform_10b.py",
         "--mode=describe"], cwd=ROOT, capture_output=True, text=True, timeout=600,
        env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    print(json.dumps(report, indent=2))
    assert report["non_embedding_params"] == 8_665_532_928
    assert abs(report["flops_per_token"]["deepseek"] - 5.583e10) / 5.583e10 < 1e-3
    assert abs(report["training_flops"]["deepseek"] - 1.0e22) / 1.0e22 < 0.02
    assert report["tokens"] == 3072 * 2048 * 29_000
    assert report["mesh"]["devices"] == 64 and report["mesh"]["fsdp"] == 64
    assert report["model"]["attention"] == "blockwise"  # temporaries without [B, H, S, S]
    memory = report["per_device_memory"]
    # Parameters (f32) and two LaProp moments, sharded 64 ways: about 1.85 GB per device.
    state_bytes = 3 * 4 * report["total_params"] / 64
    assert 0.95 * state_bytes < memory["argument_bytes"] < 1.1 * state_bytes
    assert memory["temp_bytes"] > 0
