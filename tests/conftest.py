import os

# Tests run on the CPU; 4 simulated devices let sharding tests run without a GPU.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
