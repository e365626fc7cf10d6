"""Config building blocks shared by `experiments/*.py` (ml_collections, configs as code).

Each experiment file is a `get_config()` that starts from `pretraining(preset)`
and changes a few fields; every field is commented here, once.
"""

import dataclasses
import importlib.util
import os

import ml_collections

from albert_jax import model as model_lib


def data_root() -> str:
  """The folder of real data (GLUE, SQuAD, text, the official vocabulary; README "Data"): $ALBERT_JAX_DATA, else
  `shared/data` beside the checkout that holds this package."""
  default = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), os.pardir, "shared", "data")
  return os.environ.get("ALBERT_JAX_DATA") or os.path.normpath(default)


def load_file(path: str | os.PathLike) -> ml_collections.ConfigDict:
  """The config of an experiment file (`get_config()` of e.g. experiments/base.py), as `--config=PATH` reads it."""
  spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def model_section(preset: str, **overrides) -> ml_collections.ConfigDict:
  """`config.model`: every `AlbertConfig` field, filled from a preset, plus the preset's name."""
  values = model_lib.AlbertConfig.preset(preset, **overrides).to_dict()
  return ml_collections.ConfigDict({"preset": preset, **values})


def model_config(config: ml_collections.ConfigDict) -> model_lib.AlbertConfig:
  """The `AlbertConfig` described by `config.model` (the `preset` field is informational)."""
  fields = {f.name for f in dataclasses.fields(model_lib.AlbertConfig)}
  values = {k: v for k, v in config.model.to_dict().items() if k in fields}
  return model_lib.AlbertConfig(**values)


def _add_parallelism(c: ml_collections.ConfigDict) -> None:
  """`config.mesh` and `config.distributed`, the same for pretraining and fine-tuning."""
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # data-parallel size; -1 = the devices left over
  c.mesh.fsdp = 1  # parameter/optimizer-state sharding (ZeRO-3 style)
  c.mesh.tensor = 1  # tensor parallelism over heads and the FFN's inner dimension
  c.distributed = ml_collections.ConfigDict()
  c.distributed.coordinator_address = ""  # 'host:port' of process 0 for multi-process runs; '' = single process
  c.distributed.num_processes = 1
  c.distributed.process_id = 0
  c.distributed.auto = False  # True: let JAX detect the cluster (Cloud TPU pod, SLURM)
  c.distributed.heartbeat_timeout_seconds = 60  # a process silent this long is dead: the others stop with an error
  c.distributed.shutdown_timeout_seconds = 60  # at exit, how long each process waits for the others to finish


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

  _add_parallelism(c)

  c.log_every_steps = 100  # metrics to the log, metrics.jsonl and TensorBoard
  c.eval_every_steps = 5000  # held-out evaluation; 0 disables
  c.eval_batches = 10  # batches per evaluation
  c.checkpoint_every_steps = 5000  # asynchronous orbax saves
  c.keep_checkpoints = 3  # newest checkpoints kept
  c.nan_policy = "stop"  # on a non-finite loss: 'stop' (keep the last good checkpoint) or 'skip' the update
  c.seed = 0  # parameters, data order, masks and dropout all derive from it
  c.nan_at_step = -1  # fault injection for tests: a non-finite loss at this step (-1: never)
  c.nan_value = "nan"  # the loss injected at nan_at_step: 'nan' or 'inf'
  return c


def check(c: ml_collections.ConfigDict) -> None:
  """Refuses values the trainers cannot run with, naming the field (types and unknown keys: ml_collections)."""
  for name in ("batch_size", "log_every_steps", "checkpoint_every_steps", "keep_checkpoints"):
    if c[name] < 1:
      raise ValueError(f"config.{name}={c[name]}: must be at least 1.")
  for name in ("num_train_steps", "eval_every_steps"):
    if c[name] < 0:
      raise ValueError(f"config.{name}={c[name]}: must be 0 or more.")
  if c.nan_policy not in ("stop", "skip"):
    raise ValueError(f"config.nan_policy={c.nan_policy!r}: use 'stop' or 'skip'.")
  if c.get("nan_value", "nan") not in ("nan", "inf"):
    raise ValueError(f"config.nan_value={c.nan_value!r}: use 'nan' or 'inf'.")


# Model fields a fine-tuning run takes from its config even when the shape comes from `init_checkpoint`.
FINETUNING_MODEL_FIELDS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout_prob",
                           "dtype", "remat_policy", "scan_unroll")


def finetuning(task: str, data_dir: str, preset: str = "base") -> ml_collections.ConfigDict:
  """The original fine-tuning recipe of one task (google-research/albert README, Table 14 of the paper)."""
  from albert_jax import tasks  # pylint: disable=g-import-not-at-top  (tasks imports the data readers)
  spec = tasks.get_spec(task)
  hp = spec.hparams
  c = ml_collections.ConfigDict()
  c.init_checkpoint = ""  # SRC of the backbone: HF dir, albert_jax dir, pretraining workdir, TF checkpoint; '' = random
  # AlbertConfig fields. With init_checkpoint the shape comes from the checkpoint and only
  # FINETUNING_MODEL_FIELDS (dropout, dtype, remat) are read here; '' uses every field (vocab_size 0 = the vocabulary's).
  c.model = model_section(preset, vocab_size=0, hidden_dropout_prob=hp.dropout,
                          attention_probs_dropout_prob=hp.dropout, classifier_dropout_prob=hp.classifier_dropout)

  c.task = ml_collections.ConfigDict()
  c.task.name = spec.name  # see albert_jax.tasks: a GLUE task, squad_v1, squad_v2 or race
  c.task.source = "files"  # 'files' (original formats in data_dir) or 'tfds' (GLUE and RACE catalog datasets)
  c.task.data_dir = data_dir  # GLUE task folder or root, SQuAD JSON folder, RACE folder
  c.task.files = ml_collections.ConfigDict(  # split -> file replacing the default name in data_dir ('' = default)
      {split: "" for split in (spec.train_split, *spec.eval_splits, *spec.test_splits)})
  c.task.tfds_data_dir = ""  # TFDS data_dir when source='tfds'; '' = TFDS's default
  c.task.vocab = ""  # SentencePiece model; '' = the one shipped with init_checkpoint
  c.task.max_seq_length = hp.max_seq_length  # tokens per input, special tokens included
  c.task.max_examples = 0  # keep only the first N examples of every split (0 = all); for smoke runs
  if spec.head == "span":
    c.task.doc_stride = 128  # tokens between the starts of two context windows
    c.task.max_query_length = 64  # question tokens kept
    c.task.n_best_size = 20  # start and end candidates per window
    c.task.max_answer_length = 30  # longest answer, in tokens
    # v2.0: '' answers where null odds exceed this; unset = the best threshold on dev (use dev's for a test set)
    c.task.null_score_diff_threshold = ml_collections.config_dict.placeholder(float)
  if spec.name == "race":
    c.task.levels = ("high", "middle")  # RACE-H and RACE-M
    c.task.max_qa_length = 128  # question+option tokens kept (the last ones)

  c.batch_size = hp.batch_size  # global batch, over all devices and hosts
  c.eval_batch_size = hp.batch_size  # global batch for evaluation and prediction
  c.num_train_steps = hp.num_train_steps  # optimizer updates
  c.warmup_steps = hp.warmup_steps  # linear warmup, then linear decay to 0
  c.learning_rate = hp.learning_rate  # AdamW peak learning rate
  c.optimizer = "adamw"  # as the original run_classifier / run_squad / run_race
  c.weight_decay = 0.01  # not applied to LayerNorm and bias parameters
  c.grad_clip_norm = 1.0  # global-norm clipping; 0 disables
  c.bias_correction = False  # Adam bias correction (False as the original; True as torch's AdamW)
  c.lr_schedule = "albert"  # 'albert' (the original's decay line) or 'linear' (transformers' linear schedule)
  c.grad_accum_steps = 1  # microbatches per update (same update, less activation memory)

  _add_parallelism(c)

  c.log_every_steps = 100  # training metrics to the log, metrics.jsonl and TensorBoard
  c.eval_every_steps = 1000  # dev evaluation with the task's metric, keeping the best checkpoint; 0 = at the end only
  c.checkpoint_every_steps = 1000  # asynchronous orbax saves of the train state (resume)
  c.keep_checkpoints = 2  # newest train-state checkpoints kept (the best one is kept apart, in best/)
  c.nan_policy = "stop"  # on a non-finite loss: 'stop' (keep the last good checkpoint) or 'skip' the update
  c.seed = 0  # head initialisation, data order and dropout all derive from it
  return c


def tiny_finetuning(c: ml_collections.ConfigDict, vocab: str) -> ml_collections.ConfigDict:
  """A few-second CPU variant of a fine-tuning config: a tiny random model, short sequences, few steps."""
  c.model.update(preset="tiny", embedding_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=64, max_position_embeddings=128)
  c.task.update(vocab=vocab, max_seq_length=64, max_examples=64)
  if "doc_stride" in c.task:
    c.task.update(doc_stride=32, max_query_length=16)
  c.update(batch_size=8, eval_batch_size=16, num_train_steps=8, warmup_steps=2, learning_rate=1e-3,
           log_every_steps=2, eval_every_steps=4, checkpoint_every_steps=4)
  return c
