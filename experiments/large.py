"""ALBERT-large pretraining as in the paper: batch 4096, 125k steps, LAMB lr 0.00176, seq 512."""

from albert_jax import config_lib


def get_config():
  config = config_lib.pretraining("large")
  # Recompute each layer in the backward pass: without it the activations of batch 4096 x seq 512 overflow a
  # TPU v3 core's 16 GiB under data parallelism (benchmarks/TPU_COMPILE.md).
  config.model.remat_policy = "full"
  return config
