"""A tiny ALBERT on the built-in corpus: a useful fill-mask model in about 10 minutes on a 2-core CPU."""

from albert_jax import config_lib


def get_config():
  config = config_lib.pretraining("base")
  config.model.update(
      preset="tiny", vocab_size=0, embedding_size=64, hidden_size=128, num_hidden_layers=4,
      num_attention_heads=2, intermediate_size=512, max_position_embeddings=128)
  config.data.source = "builtin"
  config.data.vocab_size = 1000  # at most; the built-in corpus yields fewer pieces, and vocab_size=0 follows it
  config.data.max_seq_length = 64
  config.data.max_predictions_per_seq = 10
  config.data.validation_percent = 2.0
  config.batch_size = 32
  config.num_train_steps = 1500
  config.warmup_steps = 100
  config.learning_rate = 0.005
  config.log_every_steps = 50
  config.eval_every_steps = 300
  config.eval_batches = 4
  config.checkpoint_every_steps = 300
  return config
