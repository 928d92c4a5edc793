import os

# 4 simulated CPU devices let sharding tests run without a GPU (no effect on GPU backends).
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
