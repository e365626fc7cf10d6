"""The one error of reading and writing checkpoints, shared by every format."""


class CheckpointError(ValueError):
  """A checkpoint that cannot be read as ALBERT; the message says what is wrong and what to do."""
