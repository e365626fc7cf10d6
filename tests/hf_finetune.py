"""SST-2 fine-tuning of one random model in albert_jax and in Hugging Face transformers (PyTorch), step for step.

Both start from the same weights (a Hugging Face AlbertForSequenceClassification,
copied into albert_jax), read the same batches (`finetuning.batch_rows`) and use
the same AdamW: bias correction and a linear schedule as torch's AdamW with
`get_linear_schedule_with_warmup`, eps 1e-6, weight decay 0.01 except
LayerNorm and biases, clipping at 1.0. Dropout is 0, so both are deterministic.
Used by tests/test_finetune.py (a few steps) and benchmarks/hf_finetune_parity.py
(a short run with dev accuracies).
"""

import contextlib
import re

import jax
import torch
import transformers
from flax.linen import partitioning as nn_partitioning

from albert_jax import config_lib, optim, sharding, tasks
from albert_jax import tokenizer as tokenizer_lib
from albert_jax.checkpoints import hf
from albert_jax.trainers import finetuning


def sst2_config(data_dir, vocab, steps, batch_size=16, seq=64, learning_rate=1e-3, warmup=None, **model):
  """The shared experiment: a small random model; HF-style AdamW (bias correction, linear schedule); no dropout."""
  config = config_lib.finetuning("sst2", str(data_dir))
  shape = dict(embedding_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
  shape.update(model)
  config.model.update(
    max_position_embeddings=seq,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
    classifier_dropout_prob=0.0,
    **shape,
  )
  config.task.update(vocab=str(vocab), max_seq_length=seq)
  config.mesh.data = 1
  config.update(
    batch_size=batch_size,
    eval_batch_size=batch_size,
    num_train_steps=steps,
    warmup_steps=steps // 10 if warmup is None else warmup,
    learning_rate=learning_rate,
    bias_correction=True,
    lr_schedule="linear",
  )
  return config


def hf_model(config, tokenizer, seed=0):
  """A randomly initialised transformers.AlbertForSequenceClassification with the config's shape."""
  m = config.model
  torch.manual_seed(seed)
  hf_config = transformers.AlbertConfig(
    vocab_size=tokenizer.vocab_size,
    embedding_size=m.embedding_size,
    hidden_size=m.hidden_size,
    num_hidden_layers=m.num_hidden_layers,
    num_attention_heads=m.num_attention_heads,
    intermediate_size=m.intermediate_size,
    max_position_embeddings=m.max_position_embeddings,
    hidden_act=m.hidden_act,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
    classifier_dropout_prob=0.0,
    num_labels=2,
  )
  return transformers.AlbertForSequenceClassification(hf_config)


def jax_params_from_hf(model, model_config):
  """The albert_jax AlbertForSequenceClassification params holding the same weights as `model`."""
  state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
  # hf.hf_to_params reads AlbertForPreTraining files: give it the heads it expects (ignored here).
  pretraining = transformers.AlbertForPreTraining(model.config).state_dict()
  state.update({k: v.numpy() for k, v in pretraining.items() if k.startswith(("predictions.", "sop_classifier."))})
  albert = hf.hf_to_params(state, model_config)["params"]["albert"]
  head = {"classifier": {"kernel": state["classifier.weight"].T, "bias": state["classifier.bias"]}}
  return {"params": {"albert": albert}}, head


class JaxRun:
  """albert_jax's sharded train and predict steps on one device, starting from the HF model's weights."""

  def __init__(self, config, model, train_data):
    self.config = config
    self.mesh = sharding.create_mesh(config.mesh, devices=jax.devices()[:1])
    self.rules = sharding.axis_rules(config)
    spec = tasks.get_spec(config.task)
    model_config = config_lib.model_config(config).replace(vocab_size=model.config.vocab_size)
    self.setup = finetuning.build(
      config, model_config, spec, train_data.features["input_ids"].shape[1:], self.mesh, self.rules
    )
    backbone, head = jax_params_from_hf(model, model_config)
    with self._context():
      state = finetuning.with_backbone(self.setup.init(jax.random.PRNGKey(0)), backbone, self.setup.state_shardings)
      head = jax.device_put(head, self.setup.state_shardings.params["classifier_head"])
      self.state = state.replace(params={**state.params, "classifier_head": head})
    self.train_data = train_data

  @contextlib.contextmanager
  def _context(self):
    with jax.set_mesh(self.mesh), nn_partitioning.axis_rules(self.rules):
      yield

  def step(self, step):
    rows = finetuning.batch_rows(len(self.train_data), self.config.batch_size, self.config.seed, step)
    batch = {k: v[rows] for k, v in self.train_data.features.items()}
    with self._context():
      self.state, metrics = self.setup.train_step(
        self.state, sharding.global_batch(batch, self.mesh), jax.random.PRNGKey(1)
      )
    return float(metrics["loss_sum"] / metrics["count"])

  def accuracy(self, data):
    with self._context():
      logits = finetuning.predict(self.setup, self.state.params, data, self.config.eval_batch_size, self.mesh)
    return tasks.evaluate(self.config.task, logits, data)["accuracy"]


class TorchRun:
  """The same steps in PyTorch: AdamW + get_linear_schedule_with_warmup, as a transformers user writes them."""

  def __init__(self, config, model, train_data):
    self.config, self.model, self.train_data = config, model.train(), train_data
    no_decay = re.compile(optim.NO_DECAY_PATTERN)
    named = list(model.named_parameters())
    groups = [
      {"params": [p for n, p in named if not no_decay.search(n)], "weight_decay": config.weight_decay},
      {"params": [p for n, p in named if no_decay.search(n)], "weight_decay": 0.0},
    ]
    self.optimizer = torch.optim.AdamW(groups, lr=config.learning_rate, betas=(0.9, 0.999), eps=1e-6)
    self.scheduler = transformers.get_linear_schedule_with_warmup(
      self.optimizer, config.warmup_steps, config.num_train_steps
    )

  def step(self, step):
    rows = finetuning.batch_rows(len(self.train_data), self.config.batch_size, self.config.seed, step)
    f = self.train_data.features
    loss = self.model(
      input_ids=torch.tensor(f["input_ids"][rows], dtype=torch.long),
      attention_mask=torch.tensor(f["attention_mask"][rows], dtype=torch.long),
      token_type_ids=torch.tensor(f["token_type_ids"][rows], dtype=torch.long),
      labels=torch.tensor(f["label"][rows], dtype=torch.long),
    ).loss
    self.optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip_norm)
    self.optimizer.step()
    self.scheduler.step()
    return float(loss.detach())

  @torch.no_grad()
  def accuracy(self, data):
    f = data.features
    logits = [
      self.model(
        input_ids=torch.tensor(f["input_ids"][i : i + 256], dtype=torch.long),
        attention_mask=torch.tensor(f["attention_mask"][i : i + 256], dtype=torch.long),
        token_type_ids=torch.tensor(f["token_type_ids"][i : i + 256], dtype=torch.long),
      ).logits
      for i in range(0, len(data), 256)
    ]
    return tasks.evaluate(self.config.task, torch.cat(logits).numpy(), data)["accuracy"]


def both_runs(config, train_examples=0, with_dev=True):
  """(JaxRun, TorchRun, dev data or None) from the same random model and the same SST-2 rows."""
  tokenizer = tokenizer_lib.Tokenizer(config.task.vocab)
  config.task.max_examples = train_examples
  train = tasks.load_task(config.task, tokenizer, "train")
  config.task.max_examples = 0
  dev = tasks.load_task(config.task, tokenizer, "dev") if with_dev else None
  model = hf_model(config, tokenizer, config.seed)
  return JaxRun(config, model, train), TorchRun(config, model, train), dev
