"""ALBERT-xlarge pretraining as in the paper: batch 4096, 125k steps, LAMB lr 0.00176, seq 512."""

from albert_jax import config_lib


def get_config():
  config = config_lib.pretraining("xlarge")
  return config
