"""Every test runs on 8 fake CPU devices (the Makefile sets XLA_FLAGS; this covers plain pytest)."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
