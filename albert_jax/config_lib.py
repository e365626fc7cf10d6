"""Every config default, once: the building blocks of `experiments/*.py` (ml_collections, configs as code).

Each experiment file is a `get_config()` that starts from `pretraining(preset)`
or `finetuning(task, ...)` and changes a few fields; every field is commented
here, once, and the library reads the fields without defaults of its own.
"""

import dataclasses
import importlib.util
import os

import ml_collections
from absl import logging

from albert_jax import model as model_lib
from albert_jax import sharding


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
  # Logical axis -> mesh axes (sharding.DEFAULT_RULES explains each), e.g. to shard the vocabulary over fsdp:
  # --config.logical_axis_rules="(('batch', ('data', 'fsdp')), ('vocab', 'fsdp'), ...)"
  c.logical_axis_rules = sharding.DEFAULT_RULES


def _add_optimizer(
  c: ml_collections.ConfigDict, optimizer: str, learning_rate: float, warmup_steps: int, num_train_steps: int
) -> None:
  """The optimizer fields, the same for pretraining and fine-tuning (`optim.make_optimizer` reads them)."""
  c.optimizer = optimizer  # 'lamb' (pretraining) or 'adamw' (fine-tuning, as run_classifier / run_squad / run_race)
  c.learning_rate = learning_rate  # peak learning rate
  c.warmup_steps = warmup_steps  # linear warmup, then linear decay to 0
  c.num_train_steps = num_train_steps  # optimizer updates
  c.weight_decay = 0.01  # not applied to LayerNorm and bias parameters
  c.grad_clip_norm = 1.0  # global-norm clipping; 0 disables
  c.bias_correction = False  # Adam bias correction (False as the original; True as torch's AdamW)
  c.lr_schedule = "albert"  # 'albert' (the original's decay line) or 'linear' (transformers' linear schedule)
  c.grad_accum_steps = 1  # microbatches per update (same update, less activation memory)


def _add_loop(c: ml_collections.ConfigDict, log_every: int, eval_every: int, checkpoint_every: int, keep: int) -> None:
  """The loop's intervals and its handling of a non-finite loss (`trainers.loop`)."""
  c.log_every_steps = log_every  # training metrics to the log, metrics.jsonl and TensorBoard
  c.eval_every_steps = (
    eval_every  # evaluation (fine-tuning keeps the best checkpoint); 0 = none (fine-tuning: at the end)
  )
  c.checkpoint_every_steps = checkpoint_every  # asynchronous orbax saves of the train state (resume)
  c.keep_checkpoints = keep  # newest checkpoints kept
  c.nan_policy = "stop"  # on a non-finite loss: 'stop' (keep the last good checkpoint) or 'skip' the update
  c.debug = ml_collections.ConfigDict()  # for tests only
  # Lay the mesh's devices out p0d0, p1d0, p0d1, ... as a TPU pod's mesh interleaves its hosts along the batch
  # (sharding.interleave_processes), so that a multi-process CPU run feeds rows as a pod must.
  c.debug.interleave_processes = False
  # Profiling and compilation (trainers.profiling; BUILD.md "Profiling a step" and "Compilation cache").
  c.profile_steps = ()  # START,COUNT: a jax.profiler trace of steps START+1..START+COUNT in WORKDIR/profile; () = none
  c.compilation_cache_dir = ""  # persistent compilation cache (local or gs://): restarts read compiled steps; '' = off


def pretraining(preset: str = "base") -> ml_collections.ConfigDict:
  """The paper's pretraining recipe (Lan et al. 2019, §4.1) for a model preset."""
  c = ml_collections.ConfigDict()
  c.model = model_section(preset)  # AlbertConfig fields; override e.g. --config.model.dtype=bfloat16

  c.data = ml_collections.ConfigDict()
  c.data.source = "builtin"  # 'builtin' (the shipped facts corpus), 'files', or a TFDS catalog name
  c.data.files = ""  # comma-separated text files or globs (local or gs://) when source='files'
  c.data.format = ""  # reader for files: '' (detected per file), 'lines', 'wikiextractor', 'wikitext', 'prose'
  c.data.vocab = ""  # SentencePiece model; '' trains one on the corpus into the workdir
  c.data.vocab_size = 30000  # pieces when a vocabulary is trained; must equal model.vocab_size
  c.data.data_dir = ""  # where prepared ArrayRecord datasets go (local or gs://); '' = WORKDIR/data
  c.data.prepare_workers = 1  # processes tokenising the corpus; N > 1: N Beam worker processes (requirements-beam.txt)
  c.data.beam_options = ""  # Beam pipeline options for any runner, e.g. '--runner=DataflowRunner ...' (BUILD.md)
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
  c.data.num_shards = 0  # data shards of the global stream (0 = the fewest that fit the mesh: sharding.data_shards)

  # Continued pretraining and the sentence objective (the paper's Table 5 ablation; trainers/pretraining.py).
  # SRC to start from: HF AlbertForPreTraining/AlbertForMaskedLM dir, original TF checkpoint, albert_jax checkpoint or
  # workdir, fine-tuning workdir (its backbone). Its model shape and vocabulary are used, heads it lacks start fresh,
  # the optimizer starts at step 0; '' = random init. Once WORKDIR has a checkpoint, a restart resumes WORKDIR.
  c.init_checkpoint = ""
  c.sentence_objective = "sop"  # 'sop' (ALBERT), 'nsp' (BERT's next-sentence prediction) or 'none' (MLM only)

  c.batch_size = 4096  # global batch, over all devices and hosts
  _add_optimizer(c, "lamb", learning_rate=0.00176, warmup_steps=3125, num_train_steps=125_000)
  _add_parallelism(c)
  _add_loop(c, log_every=100, eval_every=5000, checkpoint_every=5000, keep=3)
  c.eval_batches = 10  # batches per evaluation
  c.seed = 0  # parameters, data order, masks and dropout all derive from it
  return c


# Per paper size, the remat policy of the pod experiments: on the paper's TPU v3-512 (batch 4096 x seq 512,
# bfloat16, flash attention, data parallelism), the one with the least recomputation whose step fits with 10% of
# HBM to spare. Slices with more sequences per device need microbatches (benchmarks/TPU_COMPILE.md has every
# slice's row, e.g. xxlarge on v4-128: --config.model.remat_policy=save_all --config.grad_accum_steps=4).
POD_REMAT_POLICIES = {"base": "none", "large": "none", "xlarge": "save_all", "xxlarge": "dots_no_batch"}


def pod_pretraining(preset: str) -> ml_collections.ConfigDict:
  """`pretraining(preset)` as it runs on a TPU pod or a GPU (experiments/base.py ... xxlarge.py): bfloat16
  compute (float32 parameters, optimizer state, LayerNorm statistics, softmax and losses), the fused attention
  kernel, and the size's remat policy. CPU configs keep float32 and XLA attention (the `AlbertConfig` defaults)."""
  c = pretraining(preset)
  c.model.update(dtype="bfloat16", attention="flash", remat_policy=POD_REMAT_POLICIES[preset])
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
  if c.model.get("attention") == "flash" and c.model.get("attention_probs_dropout_prob", 0) > 0:
    logging.warning(
      "config.model.attention='flash' with attention_probs_dropout_prob=%g: training steps use the XLA attention "
      "(no fused kernel applies dropout to its probabilities), evaluation the fused kernel. Set "
      "--config.model.attention_probs_dropout_prob=0 to train with the kernel.",
      c.model.attention_probs_dropout_prob,
    )


# Model fields a fine-tuning run takes from its config even when the shape comes from `init_checkpoint`.
FINETUNING_MODEL_FIELDS = (
  "hidden_dropout_prob",
  "attention_probs_dropout_prob",
  "classifier_dropout_prob",
  "dtype",
  "remat_policy",
  "scan_unroll",
  "attention",
)


@dataclasses.dataclass(frozen=True)
class Recipe:
  """A task's original fine-tuning settings (AdamW; linear warmup then decay) and its splits."""

  learning_rate: float
  batch_size: int
  num_train_steps: int
  warmup_steps: int
  dropout: float  # backbone hidden and attention dropout ("ALBERT DR")
  max_seq_length: int = 512
  classifier_dropout: float = 0.1
  splits: tuple[str, ...] = ("train", "dev", "test")  # the splits config.task.files can name


_MNLI_SPLITS = ("train", "dev_matched", "dev_mismatched", "test_matched", "test_mismatched")
# The ALBERT paper's Table 14 (google-research/albert's run_glue.sh gives the same for GLUE), seq 512; SQuAD at
# seq 384 as the release README's run_squad commands; RACE as the README's note for v2 models: "lr 1e-5 and 0 ALBERT
# DR" (Table 14's 2e-5 with dropout 0.1 is the v1 setting, which makes v2 models diverge). The README table
# (`python -m albert_jax.tools.recipes_table`) lists every difference from the release.
RECIPES = {
  "cola": Recipe(1e-5, 16, 5336, 320, dropout=0.0),
  "sst2": Recipe(1e-5, 32, 20935, 1256, dropout=0.0),
  "mrpc": Recipe(2e-5, 32, 800, 200, dropout=0.0),
  "stsb": Recipe(2e-5, 16, 3598, 214, dropout=0.0),
  "qqp": Recipe(5e-5, 128, 14000, 1000, dropout=0.1),
  "mnli": Recipe(3e-5, 128, 10000, 1000, dropout=0.0, splits=_MNLI_SPLITS),
  "qnli": Recipe(1e-5, 32, 33112, 1986, dropout=0.0),
  "rte": Recipe(3e-5, 32, 800, 200, dropout=0.1),
  "wnli": Recipe(2e-5, 16, 2000, 250, dropout=0.1),
  "squad_v1": Recipe(5e-5, 48, 3649, 365, dropout=0.0, max_seq_length=384, splits=("train", "dev")),
  "squad_v2": Recipe(3e-5, 48, 8144, 814, dropout=0.0, max_seq_length=384, splits=("train", "dev")),
  "race": Recipe(1e-5, 32, 12000, 1000, dropout=0.0),
}
GLUE_TASKS = tuple(name for name in RECIPES if not name.startswith(("squad", "race")))
# Your own files (experiments/classify.py, tag.py): settings that fine-tune a base model on a few thousand examples;
# set num_train_steps for the size of your data (about 3 epochs: 3 x examples / batch_size).
OWN_FILE_RECIPES = {
  "classify": Recipe(2e-5, 32, 1000, 100, dropout=0.0, max_seq_length=128),
  "tag": Recipe(5e-5, 32, 1000, 100, dropout=0.0, max_seq_length=128),
}
# The span head each SQuAD version gets by default (config.task.head): the original release's heads.
SQUAD_HEADS = {"squad_v1": "bert", "squad_v2": "xlnet"}


def task_name(task: str) -> str:
  """The registry name of a task ('SST-2', 'sts-b', 'squad_v1', ... work), or a ValueError listing the tasks."""
  key = task.lower().replace("-", "")
  key = {k.replace("_", ""): k for k in RECIPES}.get(key.replace("_", ""), key)
  if key not in RECIPES and key not in OWN_FILE_RECIPES:
    raise ValueError(
      f"Unknown task {task.lower()!r}: use a GLUE task ({', '.join(GLUE_TASKS)}), squad_v1, squad_v2, race, "
      "classify or tag."
    )
  return key


def finetuning(task: str, data_dir: str, preset: str = "base") -> ml_collections.ConfigDict:
  """The original fine-tuning recipe of one task (`RECIPES`)."""
  name = task_name(task)
  recipe = RECIPES.get(name) or OWN_FILE_RECIPES[name]
  c = ml_collections.ConfigDict()
  c.init_checkpoint = ""  # SRC of the backbone: HF dir, albert_jax dir, pretraining workdir, TF checkpoint; '' = random
  # AlbertConfig fields. With init_checkpoint the shape comes from the checkpoint and only
  # FINETUNING_MODEL_FIELDS (dropout, dtype, remat) are read here; '' uses every field (vocab_size 0: the vocabulary's).
  c.model = model_section(
    preset,
    vocab_size=0,
    hidden_dropout_prob=recipe.dropout,
    attention_probs_dropout_prob=recipe.dropout,
    classifier_dropout_prob=recipe.classifier_dropout,
  )

  c.task = ml_collections.ConfigDict()
  c.task.name = name  # a GLUE task, squad_v1, squad_v2, race, classify or tag (albert_jax.tasks)
  if name not in OWN_FILE_RECIPES:
    c.task.source = "files"  # 'files' (original formats in data_dir) or 'tfds' (GLUE and RACE catalog datasets)
    c.task.data_dir = data_dir  # GLUE task folder or root, SQuAD JSON folder, RACE folder
    c.task.tfds_data_dir = ""  # TFDS data_dir when source='tfds'; '' = TFDS's default
  # split -> file ('' = the default in data_dir; classify and tag: train and dev must be set, test is optional)
  c.task.files = ml_collections.ConfigDict({split: "" for split in recipe.splits})
  c.task.vocab = ""  # SentencePiece model; '' = the one shipped with init_checkpoint
  c.task.max_seq_length = recipe.max_seq_length  # tokens per input, special tokens included
  c.task.max_examples = 0  # keep only the first N examples of every split (0 = all); for smoke runs
  # Length buckets (tasks.buckets): each batch (training, evaluation, prediction) is cut to the smallest of these
  # lengths that holds its longest row; increasing, ending at max_seq_length. Unset = powers of two from 32, then
  # max_seq_length ((32, 64, 128, 256, 512) at 512); () = every batch padded to max_seq_length.
  c.task.length_buckets = ml_collections.config_dict.placeholder(tuple)
  if name.startswith("squad"):
    c.task.doc_stride = 128  # tokens between the starts of two context windows
    c.task.max_query_length = 64  # question tokens kept
    # The span head: 'xlnet', the original release's SQuAD 2.0 head (end conditioned on the start, an answerability
    # classifier; model.AlbertForQuestionAnsweringXLNet), or 'bert', start and end logits per token (its v1.1 head,
    # the shape of Hugging Face's AlbertForQuestionAnswering).
    c.task.head = SQUAD_HEADS[name]
    c.task.start_n_top = 5  # xlnet: best starts decoded per window (run_squad_v2's start_n_top)
    c.task.end_n_top = 5  # xlnet: best ends decoded per start (end_n_top)
    c.task.answerability_loss_weight = 0.5  # xlnet: weight of the answerability cross-entropy in the loss
    # bert: start and end candidates per window; xlnet: answers kept in nbest_predictions.json (the candidates are
    # the start_n_top x end_n_top pairs of each window, whatever this is)
    c.task.n_best_size = 20
    c.task.max_answer_length = 30  # longest answer, in tokens
    # v2.0: '' answers where null odds exceed this; unset = the best threshold on dev (use dev's for a test set).
    # Null odds: xlnet, the smallest answerability logit over the windows; bert, null score - best span score.
    c.task.null_score_diff_threshold = ml_collections.config_dict.placeholder(float)
  # Your own files (albert_jax.tasks.classify, tagging).
  if name == "classify":  # .csv / .tsv with a header row, or .jsonl
    c.task.text_fields = "text"  # one text column, or two: 'premise,hypothesis'
    c.task.label_field = "label"  # classes (strings, integers) or scores (numbers with decimals)
    c.task.problem = ""  # 'classification', 'regression', or '' to decide from the train labels (said in the log)
  if name == "tag":  # CoNLL (a token a line, its tag last, blank lines between sentences) or .jsonl {tokens, tags}
    c.task.tokens_field = "tokens"  # .jsonl: the field of a sentence's words
    c.task.tags_field = "tags"  # .jsonl: the field of their tags (IOB1, IOB2 or any tag set)
  if name == "race":
    c.task.levels = ("high", "middle")  # RACE-H and RACE-M
    c.task.max_qa_length = 128  # question+option tokens kept (the last ones)

  c.batch_size = recipe.batch_size  # global batch, over all devices and hosts
  c.eval_batch_size = recipe.batch_size  # global batch for evaluation and prediction
  _add_optimizer(c, "adamw", recipe.learning_rate, recipe.warmup_steps, recipe.num_train_steps)
  _add_parallelism(c)
  _add_loop(c, log_every=100, eval_every=1000, checkpoint_every=1000, keep=2)  # the best checkpoint: in best/
  c.seed = 0  # head initialisation, data order and dropout all derive from it
  return c


def tiny_finetuning(c: ml_collections.ConfigDict, vocab: str) -> ml_collections.ConfigDict:
  """A few-second CPU variant of a fine-tuning config: a tiny random model, short sequences, few steps."""
  c.model.update(
    preset="tiny",
    embedding_size=16,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=128,
  )
  c.task.update(vocab=vocab, max_seq_length=64, max_examples=64)
  if "doc_stride" in c.task:
    c.task.update(doc_stride=32, max_query_length=16)
  c.update(
    batch_size=8,
    eval_batch_size=16,
    num_train_steps=8,
    warmup_steps=2,
    learning_rate=1e-3,
    log_every_steps=2,
    eval_every_steps=4,
    checkpoint_every_steps=4,
  )
  return c
