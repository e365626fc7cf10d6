"""`python -m albert_jax.convert --input=SRC --output=DIR`: any ALBERT checkpoint → an albert_jax checkpoint directory.

SRC is a Hugging Face ALBERT directory (config.json + model.safetensors or pytorch_model.bin), an original
google-research/albert TensorFlow checkpoint (a prefix such as `albert_base/model.ckpt-best`, or its directory,
with `albert_config.json` beside it), or anything else `checkpoints.load` reads. A SentencePiece model found
beside the weights (spiece.model, or the TF releases' 30k-clean.model) is copied along as spiece.model.
"""

from absl import flags

from albert_jax import checkpoints, cli

_INPUT = flags.DEFINE_string("input", None, "Source: Hugging Face dir, TF checkpoint or albert_jax checkpoint.")
_OUTPUT = flags.DEFINE_string("output", None, "Directory to write the albert_jax checkpoint to.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace the contents of a non-empty --output.")


def main():
  print(f"Wrote {checkpoints.convert(_INPUT.value, _OUTPUT.value, _OVERWRITE.value)}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["input", "output"])
  cli.run(main)
