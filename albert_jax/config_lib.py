"""Config building blocks shared by `experiments/*.py` (ml_collections, configs as code).

Each experiment file is a `get_config()` that starts from `pretraining(preset)`
and changes a few fields; every field is commented here, once.
"""

import dataclasses

import ml_collections

from albert_jax import model as model_lib


def model_section(preset: str, **overrides) -> ml_collections.ConfigDict:
  """`config.model`: every `AlbertConfig` field, filled from a preset, plus the preset's name."""
  values = model_lib.AlbertConfig.preset(preset, **overrides).to_dict()
  return ml_collections.ConfigDict({"preset": preset, **values})


def model_config(config: ml_collections.ConfigDict) -> model_lib.AlbertConfig:
  """The `AlbertConfig` described by `config.model` (the `preset` field is informational)."""
  fields = {f.name for f in dataclasses.fields(model_lib.AlbertConfig)}
  values = {k: v for k, v in config.model.to_dict().items() if k in fields}
  return model_lib.AlbertConfig(**values)


def pretraining(preset: str = "base") -> ml_collections.ConfigDict:
  """The paper's pretraining recipe (Lan et al. 2019, §4.1) for a model preset."""
  c = ml_collections.ConfigDict()
  c.model = model_section(preset)  # AlbertConfig fields; override e.g. --config.model.dtype=bfloat16

  c.data = ml_collections.ConfigDict()
  c.data.source = "builtin"  # 'builtin' (the shipped facts corpus), 'files', or a TFDS catalog name
  c.data.files = ""  # comma-separated text files or globs when source='files'
  c.data.format = ""  # reader for files: '' (auto), 'bert', 'wikiextractor', 'wikitext', 'text'
  c.data.vocab = ""  # SentencePiece model; '' trains one on the corpus into the workdir
  c.data.vocab_size = 30000  # pieces when a vocabulary is trained; must equal model.vocab_size
  c.data.data_dir = ""  # where prepared ArrayRecord datasets go; '' = WORKDIR/data
  c.data.max_seq_length = 512  # tokens per sequence, [CLS] A [SEP] B [SEP]
  c.data.max_predictions_per_seq = 20  # masked positions per sequence (the paper: 20)
  c.data.masked_lm_prob = 0.15  # share of tokens masked
  c.data.short_seq_prob = 0.1  # share of sequences with a shorter target length
  c.data.max_ngram = 3  # n-gram masking up to this n, p(n) ∝ 1/n
  c.data.validation_percent = 1.0  # percent of documents held out for evaluation
  c.data.builtin_seed = 0  # seed of the built-in corpus generator
  c.data.text_field = "text"  # text feature of a TFDS catalog dataset
  c.data.shuffle_window = 1024  # examples shuffled together after pairing, so a batch mixes documents
  c.data.read_threads = 4  # grain threads reading and pairing documents
  c.data.num_shards = 0  # data shards of the global stream (0 = one per process); fixed, batches match any host count

  c.batch_size = 4096  # global batch, over all devices and hosts
  c.num_train_steps = 125_000  # optimizer updates
  c.warmup_steps = 3125  # linear warmup, then linear decay to 0
  c.learning_rate = 0.00176  # LAMB peak learning rate
  c.optimizer = "lamb"  # 'lamb' (pretraining) or 'adamw'
  c.weight_decay = 0.01  # not applied to LayerNorm and bias parameters
  c.grad_clip_norm = 1.0  # global-norm clipping; 0 disables
  c.grad_accum_steps = 1  # microbatches per update (same update, less activation memory)

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # data-parallel size; -1 = the devices left over
  c.mesh.fsdp = 1  # parameter/optimizer-state sharding (ZeRO-3 style)
  c.mesh.tensor = 1  # tensor parallelism over heads and the FFN's inner dimension
  c.distributed = ml_collections.ConfigDict()
  c.distributed.coordinator_address = ""  # 'host:port' of process 0 for multi-process runs; '' = single process
  c.distributed.num_processes = 1
  c.distributed.process_id = 0
  c.distributed.auto = False  # True: let JAX detect the cluster (Cloud TPU pod, SLURM)

  c.log_every_steps = 100  # metrics to the log, metrics.jsonl and TensorBoard
  c.eval_every_steps = 5000  # held-out evaluation; 0 disables
  c.eval_batches = 10  # batches per evaluation
  c.checkpoint_every_steps = 5000  # asynchronous orbax saves
  c.keep_checkpoints = 3  # newest checkpoints kept
  c.nan_policy = "stop"  # on a non-finite loss: 'stop' (keep the last good checkpoint) or 'skip' the update
  c.seed = 0  # parameters, data order, masks and dropout all derive from it
  c.nan_at_step = -1  # fault injection for tests: a NaN loss at this step (-1: never)
  return c
