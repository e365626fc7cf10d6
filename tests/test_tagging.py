"""Token classification of your own files: CoNLL and JSON Lines, first-piece labels, windows, conlleval's scores.

The reference for the scores is seqeval (its default mode reads IOB1 and IOB2 chunks as conlleval does). The
end-to-end runs fine-tune a tiny random model for two steps on generated CoNLL files, in IOB1 and in IOB2, and
score the predictions file they wrote with seqeval against the dev file: the scores must be those reported.
"""

import importlib.util
import json
import random

import flax.linen as nn
import jax
import numpy as np
import pytest
import seqeval.metrics

from albert_jax import model as model_lib
from albert_jax import tasks
from albert_jax import tokenizer as tokenizer_lib
from albert_jax.tasks import tagging
from albert_jax.trainers import finetuning
from tests import fixtures
from tests.conftest import REPO

TYPES = ("PER", "LOC", "ORG")


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
  """The IOB1 and IOB2 runs have the same shapes (seven tags each): the second compiles nothing."""
  with fixtures.compilation_cache(tmp_path_factory.mktemp("xla_cache")):
    yield


def tagged_sentences(count, seed, scheme):
  """Generated sentences with random entities, in IOB2 or IOB1 (B- only where an entity follows one of its type).

  Every fifth sentence is long (several sentences joined), so that it needs more than one window.
  """
  rng = random.Random(seed)
  out = []
  for i, text in enumerate(fixtures.sentences(count, seed)):
    words = text.split()
    if i % 5 == 4:
      words = " ".join(fixtures.sentences(6, seed + i)).split()
    tags, w = [], 0
    while w < len(words):
      if rng.random() < 0.35:
        kind, length = rng.choice(TYPES), rng.randint(1, 3)
        follows = bool(tags) and tags[-1] != "O" and tags[-1][2:] == kind
        first = "B" if scheme == "IOB2" or follows else "I"
        tags += [f"{first}-{kind}"] + [f"I-{kind}"] * (length - 1)
        w += length
        if rng.random() < 0.3:  # the same type again, right after: IOB1's B-
          tags.append(f"B-{kind}")
          w += 1
      else:
        tags.append("O")
        w += 1
    out.append((words, tags[: len(words)]))
  return out


def write_conll(path, sentences):
  lines = ["-DOCSTART- -X- O", ""]
  for words, tags in sentences:
    lines += [f"{word} NN {tag}" for word, tag in zip(words, tags)] + [""]
  path.write_text("\n".join(lines), encoding="utf-8")
  return path


def read_conll_tags(path):
  """Each sentence's last column, read independently of albert_jax."""
  sentences, current = [], []
  for line in [*path.read_text(encoding="utf-8").splitlines(), ""]:
    if line.strip() and not line.startswith("-DOCSTART-"):
      current.append(line.split())
    elif current:
      sentences.append(current)
      current = []
  return sentences


def _experiment(vocab, **task):
  spec = importlib.util.spec_from_file_location("tag", REPO / "experiments" / "tag.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("tiny")
  config.task.update(vocab=str(vocab), max_seq_length=32, **task)
  # The random head's own tags (learning rate 0): a tiny model's first steps turn every tag into 'O', and the
  # comparison with seqeval must be of predictions that find some entities and miss others.
  config.update(num_train_steps=2, eval_every_steps=2, checkpoint_every_steps=2, learning_rate=0.0)
  return config


@pytest.mark.parametrize("scheme", ["IOB1", "IOB2"])
def test_tagging_a_conll_file_scores_as_seqeval_on_its_predictions_file(scheme, generated_vocab, tmp_path):
  train = write_conll(tmp_path / "train.conll", tagged_sentences(60, 0, scheme))
  dev = write_conll(tmp_path / "dev.conll", tagged_sentences(25, 1, scheme))
  config = _experiment(generated_vocab, files={"train": str(train), "dev": str(dev), "test": ""})
  results = finetuning.finetune(config, str(tmp_path / "workdir"))
  meta = json.loads((tmp_path / "workdir" / "config.json").read_text())
  assert (meta["head"], meta["id2label"]) == ("tagging", sorted({f"{p}-{t}" for p in "BI" for t in TYPES} | {"O"}))
  gold = read_conll_tags(dev)
  predicted = read_conll_tags(tmp_path / "workdir" / "tag_dev.conll")
  # Every word of every sentence, long ones included, comes back in order with its other columns.
  assert [[row[:-1] for row in s] for s in predicted] == [[row[:-1] for row in s] for s in gold]
  gold_tags, predicted_tags = [[r[-1] for r in s] for s in gold], [[r[-1] for r in s] for s in predicted]
  assert results["dev"] == pytest.approx(
    {
      "precision": seqeval.metrics.precision_score(gold_tags, predicted_tags),
      "recall": seqeval.metrics.recall_score(gold_tags, predicted_tags),
      "f1": seqeval.metrics.f1_score(gold_tags, predicted_tags),
      "accuracy": seqeval.metrics.accuracy_score(gold_tags, predicted_tags),
    }
  )
  assert results["dev"]["f1"] > 0  # some entities right: the comparison is not of two zeros


@pytest.mark.parametrize("scheme", ["IOB1", "IOB2"])
def test_conll_scores_equal_seqeval_on_noisy_predictions(scheme):
  rng = random.Random(3)
  tags = [f"{p}-{t}" for p in "BI" for t in TYPES] + ["O"]
  gold = [t for _, t in tagged_sentences(200, 5, scheme)]
  predicted = [[rng.choice(tags) if rng.random() < 0.2 else t for t in s] for s in gold]
  scores = tagging.conll_scores(gold, predicted)
  assert scores == pytest.approx(
    {
      "precision": seqeval.metrics.precision_score(gold, predicted),
      "recall": seqeval.metrics.recall_score(gold, predicted),
      "f1": seqeval.metrics.f1_score(gold, predicted),
      "accuracy": seqeval.metrics.accuracy_score(gold, predicted),
    }
  )
  assert 0.3 < scores["f1"] < 0.95


def test_each_word_is_labelled_on_its_first_piece_and_long_sentences_become_windows(tmp_path, generated_vocab):
  tokenizer = tokenizer_lib.Tokenizer(generated_vocab)
  words = "Łukasz visited the naïve hero's café".split() * 3
  tags = ["B-PER", "O", "O", "B-PER", "I-PER", "O"] * 3
  sentence = tagging.Sentence(1, tuple(words), tuple(tags), None)
  label_names = ("B-PER", "I-PER", "O")
  pieces = tokenizer.encode_batch(words)
  assert max(len(p) for p in pieces) > 1  # some word has several pieces
  max_seq_length = sum(len(p) for p in pieces) // 2 + 2
  features, windows = tagging.to_features([sentence], tokenizer, max_seq_length, label_names)
  assert len(windows) >= 2 and windows[0].first == 0
  assert sum(len(w.positions) for w in windows) == len(words)
  for row, window in enumerate(windows):
    ids = features["input_ids"][row]
    labels = features["label"][row]
    expected_ids = [tokenizer.cls_id] + [
      i for w in pieces[window.first : window.first + len(window.positions)] for i in w
    ]
    assert ids[: len(expected_ids) + 1].tolist() == [*expected_ids, tokenizer.sep_id]
    labelled = np.flatnonzero(labels != tagging.IGNORE).tolist()
    assert labelled == list(window.positions)
    assert [label_names[labels[p]] for p in labelled] == tags[window.first : window.first + len(labelled)]


def test_json_lines_predictions_keep_the_record_and_replace_its_tags(tmp_path, generated_vocab):
  path = tmp_path / "dev.jsonl"
  records = [
    {"id": 7, "tokens": ["Ann", "sold", "it"], "tags": ["B-PER", "O", "O"]},
    {"tokens": ["Tom"], "tags": ["I-PER"]},
  ]
  path.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
  config = _experiment(generated_vocab, files={"train": str(path), "dev": str(path), "test": ""})
  spec = tasks.get_spec(config.task)
  assert spec.label_names == ("B-PER", "I-PER", "O")
  data = tasks.load_task(config.task, tokenizer_lib.Tokenizer(generated_vocab), "dev")
  logits = np.zeros((*data.features["input_ids"].shape, 3), np.float32)
  logits[..., 2] = 1.0  # "O" everywhere
  (written,) = tasks.write_predictions(config.task, logits, data, tmp_path / "out")
  assert written.name == "tag_dev.jsonl"
  assert [json.loads(line) for line in written.read_text().splitlines()] == [
    {"id": 7, "tokens": ["Ann", "sold", "it"], "tags": ["O", "O", "O"]},
    {"tokens": ["Tom"], "tags": ["O"]},
  ]
  assert tasks.evaluate(config.task, logits, data) == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "accuracy": 0.5}


def test_a_dev_tag_the_train_file_never_had_names_its_sentence(tmp_path, generated_vocab):
  train = write_conll(tmp_path / "train.conll", [(["Ann", "sold"], ["B-PER", "O"])])
  dev = write_conll(tmp_path / "dev.conll", [(["Tom"], ["B-PER"]), (["Rome", "fell"], ["B-LOC", "O"])])
  config = _experiment(generated_vocab, files={"train": str(train), "dev": str(dev), "test": ""})
  with pytest.raises(ValueError) as error:
    tasks.load_task(config.task, tokenizer_lib.Tokenizer(generated_vocab), "dev")
  assert str(error.value) == (
    f"{dev}:5: tag 'B-LOC' (in the sentence from this line) is not among the train file's tags ['B-PER', 'O']; "
    "fix it, or add examples of it to the train file."
  )


def test_the_loss_counts_first_pieces_only():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 5, 3)).astype(np.float32)
  labels = np.array([[-100, 2, -100, 0, -100], [-100, 1, 1, -100, -100]], np.int32)
  sums = finetuning.task_losses("tagging", logits, {"label": labels})
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  rows, cols = np.nonzero(labels >= 0)
  assert float(sums["count"]) == 4
  assert float(sums["loss_sum"]) == pytest.approx(-log_probs[rows, cols, labels[rows, cols]].sum(), rel=1e-5)
  assert float(sums["correct"]) == np.sum(logits[rows, cols].argmax(-1) == labels[rows, cols])


def test_token_classification_has_hugging_faces_layout():
  config = model_lib.AlbertConfig(
    vocab_size=50, embedding_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
  )
  model = model_lib.AlbertForTokenClassification(config, num_labels=5)
  params = nn.unbox(model.init(jax.random.PRNGKey(0), np.zeros((1, 4), np.int32)))["params"]
  assert set(params) == {"albert", "classifier"} and "pooler" not in params["albert"]
  assert (params["classifier"]["kernel"].shape, params["classifier"]["bias"].shape) == ((16, 5), (5,))
  assert model.apply({"params": params}, np.ones((2, 7), np.int32)).shape == (2, 7, 5)  # a tag per token
