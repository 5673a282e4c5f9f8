"""Every test runs on 8 fake CPU devices (the Makefile sets XLA_FLAGS; this covers plain pytest)."""

import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
# Experiment files import `experiments.base`, as they do under `python -m dlmjax.main`.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from interop_fixtures import interop_run  # noqa: E402, F401  (session fixture of the interop tests)
