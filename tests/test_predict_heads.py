"""Every fine-tuned head leaves and comes back: export to its Hugging Face class, `predict`, and Hugging Face's side.

Tiny random models of each head (tests/heads.py) with the shared 30k vocabulary answer real texts (GLUE and
SQuAD dev). For each exported head, on 100 inputs, transformers agrees with `albert_jax.predict`: the same label,
span or choice, and logits within 1e-4. The Hugging Face side is the `text-classification` pipeline; for spans,
`AlbertForQuestionAnswering` with the span decoding of transformers 4's question-answering pipeline (softmax over
[CLS] and the context, best start ≤ end, "" where [CLS]-[CLS] beats it), which transformers 5 no longer ships;
`AlbertForMultipleChoice`'s logits for multiple choice.
"""

import csv
import json
import subprocess
import sys
import zipfile

import ml_collections
import numpy as np
import pytest
import torch
import transformers

from albert_jax import checkpoints, tasks
from albert_jax import tokenizer as tokenizer_lib
from albert_jax.checkpoints import export
from albert_jax.tasks import fill_mask, inference
from albert_jax.trainers import finetuning
from tests import heads
from tests.conftest import REPO, SHARED_DATA, SPM_MODEL, needs_data

pytestmark = needs_data("the 30k vocabulary, GLUE and SQuAD dev")
N = 100
MAX_SEQ_LENGTH = 256
PAIR_LABELS = ("different", "paraphrase")
AUTO_CLASSES = {
  "classification": transformers.AutoModelForSequenceClassification,
  "regression": transformers.AutoModelForSequenceClassification,
  "span": transformers.AutoModelForQuestionAnswering,
  "multiple_choice": transformers.AutoModelForMultipleChoice,
  "tagging": transformers.AutoModelForTokenClassification,
}
TAGS = ("B-LOC", "B-PER", "I-LOC", "I-PER", "O")


def _glue_pairs(task, first, second, n=N):
  path = SHARED_DATA / "glue" / task / "dev.tsv"
  with open(path, encoding="utf-8-sig") as f:
    rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
  header = rows[0]
  return [{"text": r[header.index(first)], "text_pair": r[header.index(second)]} for r in rows[1 : n + 1]]


def _tagging_rows(tokenizer):
  """MRPC dev sentences whose every word starts with a piece that holds a character. The pipeline tells words
  apart by a heuristic (a piece starts a word when a space precedes it), which splits a word whose first piece is
  a lone "▁" ("▁" "116" ".78") in two."""
  lone = tokenizer.piece_to_id("\u2581")
  sentences = [p["text_pair"] for p in _glue_pairs("MRPC", "#1 String", "#2 String", 4 * N)]
  whole = [s for s in sentences if all(tokenizer.encode(w)[0] != lone for w in s.split())]
  return [{"text": s} for s in whole[:N]]


def _squad_rows(tokenizer):
  """Questions of SQuAD v1.1 dev whose context fits one window (transformers 4's pipeline and `squad` agree on
  windows only in spirit), with the first gold answer of each."""
  with zipfile.ZipFile(SHARED_DATA / "squad" / "dev-v1.1.json.zip") as archive:
    dataset = json.loads(archive.read("dev-v1.1.json"))
  rows = []
  for article in dataset["data"]:
    for paragraph in article["paragraphs"]:
      if len(tokenizer.encode(paragraph["context"])) > MAX_SEQ_LENGTH - 70:
        continue
      qa = paragraph["qas"][0]
      rows.append({"question": qa["question"], "context": paragraph["context"], "gold": qa["answers"][0]["text"]})
  return rows[:N]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  """head -> (fine-tuning workdir, its export, the rows it answers). The classifiers' bias is centred on the rows'
  logits, so that each label wins on some of them."""
  root = tmp_path_factory.mktemp("heads")
  tokenizer = tokenizer_lib.Tokenizer(SPM_MODEL)
  config = heads.model_config(SPM_MODEL)
  squad_rows = _squad_rows(tokenizer)
  pairs = _glue_pairs("MRPC", "#1 String", "#2 String")
  answers = [r["gold"] for r in squad_rows] * 2
  choice_rows = [
    {"text": pair["text"], "question": row["question"], "choices": answers[i : i + 4]}
    for i, (pair, row) in enumerate(zip(pairs, squad_rows))
  ]
  setups = {
    "classification": (PAIR_LABELS, "mrpc", pairs),
    "regression": (("similarity",), "stsb", _glue_pairs("STS-B", "sentence1", "sentence2")),
    "span": (None, "squad_v2", [{k: r[k] for k in ("question", "context")} for r in squad_rows]),
    "multiple_choice": (("A", "B", "C", "D"), "race", choice_rows),
    "tagging": (TAGS, "tag", _tagging_rows(tokenizer)),
  }
  out = {}
  for seed, (head, (labels, task, rows)) in enumerate(setups.items()):
    params = heads.random_params(head, config, len(labels) if labels and head != "multiple_choice" else 1, seed)
    directory = heads.write_workdir(root / head, SPM_MODEL, config, head, params, labels, task, MAX_SEQ_LENGTH)
    if head in ("classification", "tagging"):
      predictor = inference.Predictor(directory, tokenizer, batch_size=N)
      features, _ = predictor.encode(rows)
      logits = predictor.outputs(features)
      if head == "tagging":
        logits = logits[features["attention_mask"] == 1]
      bias = params["classifier_head"]["classifier"] if head == "classification" else params["classifier"]
      bias["bias"] -= logits.mean(0).astype(np.float32)
      directory = heads.write_workdir(
        root / f"{head}_centred", SPM_MODEL, config, head, params, labels, task, MAX_SEQ_LENGTH
      )
    out[head] = (directory, export.export(directory, root / f"{head}_hf"), rows)
  return out


@pytest.fixture(scope="module")
def answers(models):
  """head -> (albert_jax.predict's answers to the rows, its predictor, the rows' features and the head's outputs).

  One batch each: one compilation. The span head searches every start and end, as Hugging Face's pipeline does,
  and answers "" for half the questions (a random head's null odds are all alike, so the threshold is their
  median).
  """
  out = {}
  for head, (workdir, _, rows) in models.items():
    tokenizer = tokenizer_lib.Tokenizer(workdir / "spiece.model")
    predictor = inference.Predictor(workdir, tokenizer, batch_size=N, n_best_size=MAX_SEQ_LENGTH)
    features, index = predictor.encode(rows)
    outputs = predictor.outputs(features)
    if head == "span":
      null_odds = [a["null_odds"] for a in predictor.answers(rows, outputs, index)]
      predictor.null_threshold = float(np.median(null_odds))
    out[head] = predictor.answers(rows, outputs, index), predictor, features, outputs
  return out


@pytest.mark.parametrize("head", list(AUTO_CLASSES))
def test_each_head_exports_to_its_class_with_no_missing_or_unexpected_keys(models, head):
  workdir, exported, _ = models[head]
  model, info = AUTO_CLASSES[head].from_pretrained(exported, output_loading_info=True)
  assert not any(info.values()), info
  assert type(model).__name__ == export.hf.HEADS[head].architecture
  config = json.loads((exported / "config.json").read_text())
  labels = json.loads((workdir / "config.json").read_text())["id2label"]
  if head in ("classification", "regression", "tagging"):
    assert model.config.id2label == dict(enumerate(labels))
    assert model.config.label2id == {name: i for i, name in enumerate(labels)}
  if head in ("classification", "regression"):
    assert config["problem_type"] == ("regression" if head == "regression" else "single_label_classification")


def test_text_classification_pipeline_agrees_on_100_pairs(models, answers):
  _, exported, rows = models["classification"]
  ours, *_ = answers["classification"]
  pipe = transformers.pipeline("text-classification", model=str(exported))
  inputs = [{"text": r["text"], "text_pair": r["text_pair"]} for r in rows]
  assert len(rows) == N and {a["label"] for a in ours} == set(PAIR_LABELS)  # both labels win somewhere
  for answer, theirs in zip(ours, pipe(inputs, top_k=None, function_to_apply="none", batch_size=N)):
    assert answer["label"] == theirs[0]["label"]  # the best first
    by_label = {entry["label"]: entry["score"] for entry in theirs}
    np.testing.assert_allclose(answer["logits"], [by_label[name] for name in PAIR_LABELS], atol=1e-4, rtol=0)
  # Probabilities as the pipeline gives them by default (its softmax), for a few rows.
  for answer, theirs in zip(ours, pipe(inputs[:5], top_k=None)):
    assert [(s["label"], round(s["score"], 5)) for s in answer["scores"]] == [
      (s["label"], round(s["score"], 5)) for s in theirs
    ]


def test_text_classification_pipeline_agrees_on_100_regression_scores(models, answers):
  _, exported, rows = models["regression"]
  ours, *_ = answers["regression"]
  pipe = transformers.pipeline("text-classification", model=str(exported))
  theirs = pipe(
    [{"text": r["text"], "text_pair": r["text_pair"]} for r in rows], function_to_apply="none", batch_size=N
  )
  assert len(rows) == N and all(t["label"] == "similarity" for t in theirs)
  np.testing.assert_allclose([a["score"] for a in ours], [t["score"] for t in theirs], atol=1e-4, rtol=0)
  assert np.std([a["score"] for a in ours]) > 1e-2


def _logits(model, encoded):
  """The model's outputs for a padded batch, in one call."""
  with torch.no_grad():
    return model(**{k: torch.tensor(encoded[k]) for k in ("input_ids", "token_type_ids", "attention_mask")})


def _reference_span(encoded, row, start, end, context, threshold, max_answer_length=30):
  """As transformers 4's question-answering pipeline decoded spans, with "no answer" allowed
  (handle_impossible_answer): the softmax over [CLS] and the context tokens; a span is a start ≤ end pair of
  context tokens at most `max_answer_length` long; "" where [CLS]-[CLS] is more likely than the best span by more
  than `threshold` (in log-probability; the pipeline's is 0).

  Returns:
    the answer; score(text), the best log-probability of a span with that text ("" is [CLS]-[CLS]).
  """
  in_context = np.array([s == 1 for s in encoded.sequence_ids(row)])[: len(start)]
  candidate = in_context.copy()
  candidate[0] = True
  log_p = lambda x: x - np.logaddexp.reduce(x[candidate])
  scores = log_p(start)[:, None] + log_p(end)[None, :]
  length = np.arange(len(end))[None, :] - np.arange(len(start))[:, None] + 1
  valid = in_context[:, None] & in_context[None, :] & (length >= 1) & (length <= max_answer_length)
  offsets = encoded["offset_mapping"][row]
  text = lambda s, e: context[offsets[s][0] : offsets[e][1]].strip()
  s, e = np.unravel_index(np.where(valid, scores, -np.inf).argmax(), scores.shape)
  answer = "" if scores[0, 0] - scores[s, e] > threshold else text(s, e)

  def score(wanted):
    return (
      scores[0, 0] if wanted == "" else max(scores[s, e] for s, e in zip(*np.nonzero(valid)) if text(s, e) == wanted)
    )

  return answer, score


def test_question_answering_agrees_on_100_squad_questions_with_no_answer(models, answers):
  _, exported, rows = models["span"]
  ours, predictor, features, outputs = answers["span"]
  tokenizer = transformers.AutoTokenizer.from_pretrained(exported)
  model = transformers.AutoModelForQuestionAnswering.from_pretrained(exported).eval()
  encoded = tokenizer(
    [r["question"] for r in rows], [r["context"] for r in rows], padding=True, return_offsets_mapping=True
  )
  out = _logits(model, encoded)
  assert len(rows) == N and len(features["input_ids"]) == N  # one window each
  ties = 0
  for i, (row, answer) in enumerate(zip(rows, ours)):
    n = sum(encoded["attention_mask"][i])
    assert features["input_ids"][i, :n].tolist() == encoded["input_ids"][i][:n]
    their_start, their_end = (x[i, :n].numpy().astype(np.float64) for x in (out.start_logits, out.end_logits))
    np.testing.assert_allclose(outputs["start_logits"][i, :n], their_start, atol=1e-4, rtol=0)
    np.testing.assert_allclose(outputs["end_logits"][i, :n], their_end, atol=1e-4, rtol=0)
    theirs, score = _reference_span(encoded, i, their_start, their_end, row["context"], predictor.null_threshold)
    if answer["answer"].strip() != theirs:  # only where another span scores the same to float precision
      assert abs(score(theirs) - score(answer["answer"].strip())) < 1e-5, (row["question"], answer["answer"], theirs)
      ties += 1
  assert ties <= 2
  assert 10 < sum(a["answer"] == "" for a in ours) < N - 10  # "no answer" (SQuAD 2.0) both given and not


def test_multiple_choice_logits_agree_on_100_questions(models, answers):
  _, exported, rows = models["multiple_choice"]
  ours, *_ = answers["multiple_choice"]
  tokenizer = transformers.AutoTokenizer.from_pretrained(exported)
  model = transformers.AutoModelForMultipleChoice.from_pretrained(exported).eval()
  firsts = [row["text"] for row in rows for _ in row["choices"]]
  seconds = [f"{row['question']} {choice}" for row in rows for choice in row["choices"]]
  encoded = tokenizer(firsts, seconds, padding=True, return_tensors="np")
  encoded = {k: v.reshape(len(rows), 4, -1) for k, v in encoded.items()}
  logits = _logits(model, encoded).logits.numpy()
  assert len(rows) == N
  np.testing.assert_allclose([a["logits"] for a in ours], logits, atol=1e-4, rtol=0)
  assert [a["label"] for a in ours] == [row["choices"][i] for row, i in zip(rows, logits.argmax(-1))]
  assert len({a["index"] for a in ours}) > 1


def test_token_classification_pipeline_agrees_on_100_sentences(models, answers):
  _, exported, rows = models["tagging"]
  ours, _, features, logits = answers["tagging"]
  tokenizer = transformers.AutoTokenizer.from_pretrained(exported)
  model = transformers.AutoModelForTokenClassification.from_pretrained(exported).eval()
  pipe = transformers.pipeline("token-classification", model=model, tokenizer=tokenizer, aggregation_strategy="first")
  encoded = tokenizer([r["text"] for r in rows], padding=True)
  theirs = _logits(model, encoded).logits.numpy()
  assert len(rows) == N and len(features["input_ids"]) == N  # one window each
  for i, (row, answer, entities) in enumerate(zip(rows, ours, pipe([r["text"] for r in rows], batch_size=N))):
    n = sum(encoded["attention_mask"][i])
    assert features["input_ids"][i, :n].tolist() == encoded["input_ids"][i][:n]
    np.testing.assert_allclose(logits[i, :n], theirs[i, :n], atol=1e-4, rtol=0)
    text = row["text"]
    assert [(e["entity"], e["word"]) for e in answer["entities"]] == [
      (e["entity_group"], text[e["start"] : e["end"]].strip()) for e in entities
    ], text
  assert {e["entity"] for a in ours for e in a["entities"]} == {"LOC", "PER"}


def _decision(answer):
  """The label, span, choice or entities of an answer."""
  entities = [(e["entity"], e["start"], e["end"]) for e in answer.get("entities", [])]
  return answer.get("label", answer.get("answer", entities))


def _numbers(answer):
  return answer.get("logits", answer.get("null_odds", [w["score"] for w in answer.get("words", [])]))


@pytest.mark.parametrize("head", list(AUTO_CLASSES))
def test_hugging_face_directory_predicts_as_the_workdir(models, answers, head):
  _, exported, rows = models[head]
  ours, *_ = answers[head]
  predictor = inference.Predictor(exported, fill_mask.load_tokenizer(exported), N, n_best_size=MAX_SEQ_LENGTH)
  predictor.null_threshold = answers[head][1].null_threshold
  again = predictor.predict(rows[:8])
  for a, b in zip(again, ours[:8]):
    assert _decision(a) == _decision(b)
    np.testing.assert_allclose(_numbers(a), _numbers(b), atol=1e-5)


def test_hugging_face_head_initialises_a_fine_tuning_of_the_same_task(models):
  _, exported, _ = models["classification"]
  config = ml_collections.ConfigDict({"init_checkpoint": str(exported)})
  _, pretrained = checkpoints.load(exported)
  spec = tasks.TaskSpec("own", "classification", 2, "train", ("dev",), (), "accuracy", PAIR_LABELS)
  assert finetuning.matching_head(config, spec, pretrained) == ("classifier_head",)
  other = tasks.TaskSpec("own", "classification", 2, "train", ("dev",), (), "accuracy", ("no", "yes"))
  assert finetuning.matching_head(config, other, pretrained) == ()
  hf = transformers.AutoModelForSequenceClassification.from_pretrained(exported)
  np.testing.assert_array_equal(
    pretrained["params"]["classifier_head"]["classifier"]["kernel"], hf.classifier.weight.detach().numpy().T
  )


def test_cli_predicts_a_jsonl_file_and_a_flag_row(models, answers, tmp_path):
  workdir, _, rows = models["classification"]
  ours, *_ = answers["classification"]
  source = tmp_path / "rows.jsonl"
  source.write_text("".join(json.dumps(r) + "\n" for r in rows[:5]), encoding="utf-8")
  command = [sys.executable, "-m", "albert_jax.predict", f"--checkpoint={workdir}"]
  result = subprocess.run(
    [*command, f"--input={source}", f"--output={tmp_path / 'out.jsonl'}"],
    capture_output=True,
    text=True,
    timeout=300,
    cwd=REPO,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  written = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
  assert [w["label"] for w in written] == [a["label"] for a in ours[:5]]
  np.testing.assert_allclose([w["logits"] for w in written], [a["logits"] for a in ours[:5]], atol=1e-5)
  result = subprocess.run(
    [*command, f"--text={rows[0]['text']}", f"--text_pair={rows[0]['text_pair']}"],
    capture_output=True,
    text=True,
    timeout=300,
    cwd=REPO,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert json.loads(result.stdout)["label"] == ours[0]["label"]


def test_rows_without_the_heads_fields_are_refused_by_number(answers):
  _, predictor, _, _ = answers["classification"]
  with pytest.raises(fill_mask.InputError, match="Row 2 has no text; the classification head needs --text"):
    predictor.predict([{"text": "fine"}, {"question": "Who?", "context": "Nobody."}])
  _, predictor, _, _ = answers["multiple_choice"]
  with pytest.raises(fill_mask.InputError, match="reads 4 choices per question"):
    predictor.predict([{"text": "An article.", "choices": ["a", "b"]}])
