"""GLUE: task table, readers of the real TSVs and of generated ones, features equal to Hugging Face's, bad input."""

import collections
import logging

import numpy as np
import pytest
from sentencepiece import sentencepiece_model_pb2

from albert_jax import config_lib, tasks
from albert_jax import tokenizer as tokenizer_lib
from albert_jax.tasks import glue
from tests import fixtures
from tests.conftest import SPM_MODEL, needs_data

# (task, split, rows, label counts): the shared files, read completely.
SHARED = [
  ("sst2", "train", 67349, {1: 37569, 0: 29780}),
  ("sst2", "dev", 872, {1: 444, 0: 428}),
  ("cola", "train", 8551, {1: 6023, 0: 2528}),
  ("cola", "dev", 1043, {1: 721, 0: 322}),
  ("mrpc", "train", 3668, {1: 2474, 0: 1194}),
  ("mrpc", "dev", 408, {1: 279, 0: 129}),
  ("stsb", "train", 5749, None),
  ("stsb", "dev", 1500, None),
]


@pytest.fixture(scope="module")
def glue_dir(shared_data):
  return shared_data / "glue"


@pytest.fixture(scope="module")
def tok_no_rule(generated_vocab):
  """Without ALBERT's "9," split, which Hugging Face does not implement."""
  return tokenizer_lib.Tokenizer(generated_vocab, split_digit_comma=False)


def _hf_unigram(spm_model):
  """Hugging Face's Unigram tokenizer of a SentencePiece model.

  Not `AlbertTokenizer.from_pretrained(dir)`: earlier transformers 5 releases
  split the text there at ALBERT's user-defined pieces ( ) " - ., so their ids
  differed from the original ALBERT's on most lines. This one equals
  `Tokenizer` without the "9," rule; here it checks the pair layout, token
  types and longest-first truncation.
  """
  transformers = pytest.importorskip("transformers")
  proto = sentencepiece_model_pb2.ModelProto.FromString(spm_model.read_bytes())
  return transformers.AlbertTokenizer(
    vocab=[(p.piece, p.score) for p in proto.pieces],
    _spm_precompiled_charsmap=proto.normalizer_spec.precompiled_charsmap,
  )


@pytest.fixture(
  scope="module",
  params=[
    "generated",
    pytest.param(
      "shared",
      marks=needs_data(
        "the GLUE TSVs with the official vocabulary (pairs as Hugging Face encodes them, CoLA dev loaded whole)"
      ),
    ),
  ],
)
def glue_case(request, generated_glue, generated_vocab, tok_no_rule):
  """(GLUE root, Tokenizer without the "9," rule, Hugging Face's Unigram of the same vocabulary, CoLA dev rows)."""
  if request.param == "generated":
    return generated_glue, tok_no_rule, _hf_unigram(generated_vocab), fixtures.GLUE_ROWS["dev"]
  shared_data = request.getfixturevalue("shared_data")
  return (
    shared_data / "glue",
    tokenizer_lib.Tokenizer(SPM_MODEL, split_digit_comma=False),
    _hf_unigram(SPM_MODEL),
    1043,
  )


@needs_data("the GLUE TSVs, read completely (row and label counts)")
@pytest.mark.parametrize("name,split,rows,label_counts", SHARED)
def test_shared_files_read_completely(glue_dir, name, split, rows, label_counts):
  task = glue.get_task(name)
  counts = collections.Counter()
  examples = glue.read_tsv(task, glue.task_file(task, glue_dir, split), split, counts)
  assert len(examples) == rows
  assert counts == {"examples": rows, "malformed_lines": 0}
  assert all(e.text_a for e in examples)
  assert all((e.text_b is not None) == task.is_pair for e in examples)
  if label_counts is None:  # STS-B: scores in [0, 5].
    scores = np.array([e.label for e in examples])
    assert scores.min() == 0.0 and scores.max() == 5.0
  else:
    assert dict(collections.Counter(e.label for e in examples)) == label_counts


@needs_data("MRPC dev.tsv's BOM and unbalanced quotes")
def test_mrpc_bom_and_unbalanced_quotes(glue_dir):
  task = glue.get_task("MRPC")
  examples = glue.read_tsv(task, glue.task_file(task, glue_dir, "dev"), "dev")
  assert examples[0].label == 1 and examples[0].text_a.startswith("He said the foodservice")
  assert examples[0].text_b.startswith('"The foodservice pie')  # Quote never closed.


def test_generated_files_read_completely_bom_included(generated_glue):
  for name in ("sst2", "cola", "mrpc", "stsb"):
    task = glue.get_task(name)
    for split, rows in fixtures.GLUE_ROWS.items():
      counts = collections.Counter()
      path = glue.task_file(task, generated_glue, split)
      examples = glue.read_tsv(task, path, split, counts)
      assert counts == {"examples": rows, "malformed_lines": 0}, path
      assert [e.label for e in examples[:2]] == ([5.0, 0.0] if task.is_regression else [1, 0])
  assert glue.task_file(glue.get_task("mrpc"), generated_glue, "dev").read_bytes().startswith(b"\xef\xbb\xbfQuality")


def test_mrpc_bom_header_and_unbalanced_quotes_in_a_small_file(tmp_path):
  path = tmp_path / "dev.tsv"
  path.write_text(
    "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
    '1\t1\t2\tHe said the pie "was fine.\t"The pie business\n0\t3\t4\tA b.\tC d.\n',
    "utf-8",
  )
  counts = collections.Counter()
  examples = glue.read_tsv(glue.get_task("MRPC"), path, "dev", counts)
  assert counts == {"examples": 2, "malformed_lines": 0}
  assert [(e.label, e.text_a, e.text_b) for e in examples] == [
    (1, 'He said the pie "was fine.', '"The pie business'),
    (0, "A b.", "C d."),
  ]


@pytest.mark.parametrize("name", ["sst2", "cola", "mrpc", "stsb"])
@pytest.mark.parametrize("max_length", [16, 17, 128])
def test_features_equal_hugging_face_pair_encoding(glue_case, name, max_length):
  glue_dir, tok_no_rule, hf_unigram, _ = glue_case
  task = glue.get_task(name)
  examples = glue.read_tsv(task, glue.task_file(task, glue_dir, "train"), "train")
  sample = examples[:: max(1, len(examples) // 150)][:150]
  counts = collections.Counter()
  ours = glue.to_features(sample, tok_no_rule, max_length, task.is_regression, counts)
  hf = hf_unigram(
    [e.text_a for e in sample],
    [e.text_b for e in sample] if task.is_pair else None,
    truncation="longest_first",
    max_length=max_length,
    padding="max_length",
    return_token_type_ids=True,
  )
  for key in ("input_ids", "attention_mask", "token_type_ids"):
    np.testing.assert_array_equal(ours[key], np.array(hf[key]), err_msg=key)
  lengths = [
    len(tok_no_rule.encode(e.text_a)) + (len(tok_no_rule.encode(e.text_b)) + 1 if task.is_pair else 0) + 2
    for e in sample
  ]
  assert counts["truncated"] == sum(n > max_length for n in lengths)
  assert ours["label"].dtype == (np.float32 if task.is_regression else np.int32)
  np.testing.assert_allclose(ours["label"], [e.label for e in sample], rtol=1e-6)


def test_truncate_pair_cuts_the_longer_segment_first():
  a, b = list(range(10)), list(range(100, 103))
  assert glue.truncate_pair(a, b, 8) == (a[:5], b)  # Only the longer one.
  assert glue.truncate_pair(b, a, 8) == (b, a[:5])
  assert glue.truncate_pair(a, a, 7) == (a[:3], a[:4])  # Tie: B keeps the odd token.
  assert glue.truncate_pair(a, a[:6], 7) == (a[:4], a[:3])
  assert glue.truncate_pair(a, None, 4) == (a[:4], None)
  assert glue.truncate_pair(a, b, 20) == (a, b)


# One header (or None) and one data line per layout; all nine tasks.
_LAYOUTS = {
  "cola": ("train", None, "src\t1\t\tThe cat sat."),
  "sst2": ("train", "sentence\tlabel", "a fine film \t1"),
  "mrpc": ("dev", "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String", "0\t1\t2\tA b.\tC d."),
  "stsb": (
    "train",
    "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore",
    "7\tg\tf\ty\to\ts\ts\tA b.\tC d.\t3.800",
  ),
  "qqp": ("train", "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate", "7\t1\t2\tA b?\tC d?\t1"),
  "mnli": (
    "dev_mismatched",
    "\t".join(
      [
        "index",
        "promptID",
        "pairID",
        "genre",
        "s1bp",
        "s2bp",
        "s1p",
        "s2p",
        "sentence1",
        "sentence2",
        "label1",
        "label2",
        "label3",
        "label4",
        "label5",
        "gold_label",
      ]
    ),
    "7\tp\tq\tg\tx\tx\tx\tx\tA b.\tC d.\tneutral\tneutral\tx\tx\tx\tneutral",
  ),
  "qnli": ("train", "index\tquestion\tsentence\tlabel", "7\tA b?\tC d.\tnot_entailment"),
  "rte": ("dev", "index\tsentence1\tsentence2\tlabel", "7\tA b.\tC d.\tnot_entailment"),
  "wnli": ("train", "index\tsentence1\tsentence2\tlabel", "7\tA b.\tC d.\t1"),
}
_TEST_HEADERS = {
  "cola": "index\tsentence",
  "sst2": "index\tsentence",
  "mrpc": "index\t#1 ID\t#2 ID\t#1 String\t#2 String",
  "stsb": "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2",
  "qqp": "id\tquestion1\tquestion2",
  "mnli": "index\tpromptID\tpairID\tgenre\ts1bp\ts2bp\ts1p\ts2p\tsentence1\tsentence2",
  "qnli": "index\tquestion\tsentence",
  "rte": "index\tsentence1\tsentence2",
  "wnli": "index\tsentence1\tsentence2",
}


def _test_line(header):
  fields = ["x"] * len(header.split("\t"))
  fields[0] = "42"
  names = header.split("\t")
  for i, n in enumerate(names):
    if n in ("sentence", "sentence1", "question", "question1", "#1 String"):
      fields[i] = "A b."
    if n in ("sentence2", "question2", "#2 String") or (n == "sentence" and "question" in names):
      fields[i] = "C d."
  return "\t".join(fields)


@pytest.mark.parametrize("name", sorted(_LAYOUTS))
def test_every_task_layout_train_dev_and_test(tmp_path, name):
  task = glue.get_task(name)
  split, header, line = _LAYOUTS[name]
  path = tmp_path / f"{split}.tsv"
  path.write_text("\n".join(([header] if header else []) + [line, line]) + "\n")
  examples = glue.read_tsv(task, path, split)
  assert len(examples) == 2
  first = examples[0]
  if task.is_pair:
    assert (first.text_a.rstrip(".?"), first.text_b.rstrip(".?")) == ("A b", "C d")
  else:
    assert first.text_a.strip() in ("The cat sat.", "a fine film") and first.text_b is None
  expected = {"stsb": 3.8, "mnli": 2, "mrpc": 0}.get(name, 1)
  assert first.label == pytest.approx(expected)
  # The unlabelled test file, keeping its index column.
  test_split = task.test_splits[-1]
  test_path = tmp_path / task.files[test_split]
  test_path.write_text(_TEST_HEADERS[name] + "\n" + _test_line(_TEST_HEADERS[name]) + "\n")
  (test_example,) = glue.read_tsv(task, test_path, test_split)
  assert test_example.index == "42" and test_example.label is None
  assert test_example.text_a == "A b."
  assert test_example.text_b == (None if not task.is_pair else "C d.")


def test_task_table_has_the_original_hyperparameters():
  expected = {
    "sst2": (1e-5, 32, 20935, 1256),
    "mnli": (3e-5, 128, 10000, 1000),
    "cola": (1e-5, 16, 5336, 320),
    "qnli": (1e-5, 32, 33112, 1986),
    "qqp": (5e-5, 128, 14000, 1000),
    "rte": (3e-5, 32, 800, 200),
    "stsb": (2e-5, 16, 3598, 214),
    "mrpc": (2e-5, 32, 800, 200),
  }
  for name, values in expected.items():
    h = config_lib.RECIPES[name]
    assert (h.learning_rate, h.batch_size, h.num_train_steps, h.warmup_steps) == values
    assert h.max_seq_length == 512
  assert set(glue.TASKS) == {"cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli"}
  assert glue.get_task("STS-B").num_labels == 1 and glue.get_task("mnli").num_labels == 3
  assert glue.get_task("mnli").eval_splits == ("dev_matched", "dev_mismatched")


def test_malformed_line_is_skipped_counted_and_logged(tmp_path, caplog):
  path = tmp_path / "train.tsv"
  path.write_text("sentence\tlabel\ngood \t1\nno label here\nextra\t1\tcolumn\nok \t0\n")
  counts = collections.Counter()
  with caplog.at_level(logging.WARNING):
    examples = glue.read_tsv(glue.get_task("sst2"), path, "train", counts)
  assert [e.text_a for e in examples] == ["good ", "ok "]
  assert counts["malformed_lines"] == 2
  assert f"{path}:3" in caplog.text and f"{path}:4" in caplog.text


def test_label_outside_the_label_set_is_an_error_naming_the_line(tmp_path):
  path = tmp_path / "dev.tsv"
  path.write_text("sentence\tlabel\ngood \t1\nbad \tpositive\n")
  with pytest.raises(ValueError, match=r"dev.tsv:3: label 'positive' is not one of"):
    glue.read_tsv(glue.get_task("sst2"), path, "dev")
  path.write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tneutral\n")
  with pytest.raises(ValueError, match="not one of"):
    glue.read_tsv(glue.get_task("rte"), path, "dev")


def test_stsb_score_that_is_not_a_number_is_an_error(tmp_path):
  header, line = _LAYOUTS["stsb"][1:]
  path = tmp_path / "dev.tsv"
  path.write_text(f"{header}\n{line[:-5]}high\n")
  with pytest.raises(ValueError, match="dev.tsv:2.*not a number"):
    glue.read_tsv(glue.get_task("stsb"), path, "dev")


def test_missing_file_and_unknown_split_say_what_to_do(tmp_path):
  with pytest.raises(FileNotFoundError, match="GLUE SST-2 folder"):
    glue.task_file(glue.get_task("sst2"), tmp_path, "dev")
  with pytest.raises(ValueError, match="dev_matched"):
    glue.task_file(glue.get_task("mnli"), tmp_path, "dev")
  with pytest.raises(ValueError, match="Unknown GLUE task"):
    glue.get_task("sst5")


def test_long_sentences_are_truncated_and_counted(tok_no_rule):
  examples = [glue.Example("0", "word " * 50, "other " * 30, 1), glue.Example("1", "short", "short", 0)]
  counts = collections.Counter()
  features = glue.to_features(examples, tok_no_rule, 32, counts=counts)
  assert counts["truncated"] == 1
  assert features["attention_mask"][0].sum() == 32
  # 29 tokens for text: the shorter B keeps 14 (+ [SEP]), the longer A 15.
  assert features["token_type_ids"][0].sum() == 15


def test_submission_files(tmp_path):
  sst2 = glue.get_task("sst2")
  examples = [glue.Example(str(i), "x", None, None) for i in (0, 1, 2)]
  path = glue.write_submission(sst2, "test", examples, np.array([[0.1, 2.0], [3, 1], [0, 1]]), tmp_path)
  assert path.name == "SST-2.tsv"
  assert path.read_text() == "index\tprediction\n0\t1\n1\t0\n2\t1\n"
  mnli = glue.get_task("mnli")
  paths = [glue.write_submission(mnli, s, examples[:1], [1], tmp_path) for s in ("test_matched", "test_mismatched")]
  assert [p.name for p in paths] == ["MNLI-m.tsv", "MNLI-mm.tsv"]
  assert paths[0].read_text() == "index\tprediction\n0\tentailment\n"
  stsb = glue.write_submission(glue.get_task("stsb"), "test", examples, np.array([[5.7], [-0.2], [2.3456]]), tmp_path)
  assert stsb.read_text() == "index\tprediction\n0\t5.000\n1\t0.000\n2\t2.346\n"
  with pytest.raises(ValueError, match="submissions are for test"):
    glue.write_submission(sst2, "dev", examples, [0, 1, 0], tmp_path)


def test_tfds_source_maps_labels_by_name(tok_no_rule):
  tfds = pytest.importorskip("tensorflow_datasets")
  mnli = glue.get_task("mnli")
  with tfds.testing.mock_data(num_examples=6):
    examples = glue.read_tfds(mnli, "dev_mismatched")
    data = tasks.load_task(_config("mnli", source="tfds", max_seq_length=32), tok_no_rule, "dev_matched")
  assert len(examples) == 6 and all(isinstance(e.text_b, str) for e in examples)
  assert all(e.label in (0, 1, 2) for e in examples)
  assert data.features["input_ids"].shape == (6, 32)
  # TFDS numbers MNLI entailment, neutral, contradiction; the TSVs' order differs.
  order = [mnli.labels.index(n) for n in ("entailment", "neutral", "contradiction")]
  assert order == [1, 2, 0]


def _config(name, **fields):
  """The `config.task` section config_lib builds for `name`, with `fields` changed."""
  task = config_lib.finetuning(name, fields.pop("data_dir", "")).task
  task.update(fields)
  return task


def test_load_task_and_evaluate(glue_case, tmp_path):
  glue_dir, tok_no_rule, _, cola_dev_rows = glue_case
  config = _config("cola", data_dir=str(glue_dir), max_seq_length=64)
  spec = tasks.get_spec(config)
  assert (spec.head, spec.num_labels, spec.main_metric) == ("classification", 2, "matthews_corr")
  data = tasks.load_task(config, tok_no_rule, "dev")
  assert len(data) == cola_dev_rows and data.counts["malformed_lines"] == 0
  labels = data.features["label"]
  perfect = np.eye(2)[labels]
  assert tasks.evaluate(config, perfect, data) == {"matthews_corr": 1.0, "accuracy": 1.0}
  (path,) = tasks.write_predictions(config, perfect, data, tmp_path)
  assert path.read_text().splitlines()[1] == "0\t1"
  stsb = _config("stsb", data_dir=str(glue_dir), max_seq_length=64, max_examples=30)
  data = tasks.load_task(stsb, tok_no_rule, "dev")
  assert tasks.get_spec(stsb).head == "regression" and len(data) == 30
  scores = tasks.evaluate(stsb, data.features["label"][:, None] * 2 + 1, data)
  assert scores["pearson"] == pytest.approx(1.0) and scores["spearman"] == pytest.approx(1.0)
