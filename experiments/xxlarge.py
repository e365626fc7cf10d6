"""ALBERT-xxlarge pretraining as in the paper: batch 4096, 125k steps, LAMB lr 0.00176, seq 512.

On a TPU pod or a GPU: bfloat16 compute, flash attention and the remat policy that fits a TPU v3-512
(config_lib.pod_pretraining; other slices: benchmarks/TPU_COMPILE.md). On a CPU, add
--config.model.dtype=float32 --config.model.attention=xla.
"""

from albert_jax import config_lib


def get_config():
  return config_lib.pod_pretraining("xxlarge")
