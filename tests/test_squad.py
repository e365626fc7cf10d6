"""SQuAD: answer spans through tokenisation and back, oracle predictions, v2 threshold, bad input.

Each runs on generated SQuAD files with a generated vocabulary; the dev-set tests also run on the official v1.1 dev
set and v2.0 sample with the official vocabulary when the shared data is present.
"""

import collections
import dataclasses
import json
import logging
import zipfile

import numpy as np
import pytest

from albert_jax import config_lib, tasks
from albert_jax import tokenizer as tokenizer_lib
from albert_jax.tasks import metrics, squad
from tests.conftest import SPM_MODEL, needs_data

SHARED_V1 = pytest.param("shared", marks=needs_data("the official SQuAD v1.1 dev set with the official vocabulary"))
SHARED_V2 = pytest.param(
  "shared", marks=needs_data("the SQuAD v2.0 sample (14 questions) with the official vocabulary")
)


@pytest.fixture(scope="module")
def tok(generated_vocab):
  return tokenizer_lib.Tokenizer(generated_vocab)


@pytest.fixture(scope="module")
def official_tok(shared_data):
  return tokenizer_lib.Tokenizer(SPM_MODEL)


@dataclasses.dataclass
class DevV1:
  features: dict
  index: squad.FeatureIndex
  counts: collections.Counter
  tok: tokenizer_lib.Tokenizer
  questions: int  # in the file
  max_seq_length: int


@pytest.fixture(scope="module", params=["generated", SHARED_V1])
def dev_v1(request, generated_squad, tok):
  """A v1.1 dev set as features: generated (short contexts, so windows of 64 tokens), or the full official one
  (about 10 s on one core)."""
  if request.param == "generated":
    path, questions, options = (
      generated_squad / "dev-v1.1.json",
      36,
      dict(max_seq_length=64, doc_stride=32, max_query_length=16),
    )
  else:
    path, questions, options = request.getfixturevalue("shared_data") / "squad" / "dev-v1.1.json.zip", 10570, {}
    tok = request.getfixturevalue("official_tok")
  dataset = squad.load_json(path)
  counts = collections.Counter()
  features, index = squad.make_features(squad.read_examples(dataset), tok, dataset=dataset, counts=counts, **options)
  return DevV1(features, index, counts, tok, questions, options.get("max_seq_length", 384))


@pytest.fixture(scope="module", params=["generated", SHARED_V2])
def v2_dev(request, generated_squad, tok):
  """(path, tokenizer, questions, unanswerable): a generated v2.0 dev file, or the official 14-question sample."""
  if request.param == "generated":
    return generated_squad / "dev-v2.0.json", tok, 30, 12
  path = request.getfixturevalue("shared_data") / "squad" / "hf_fixture_dev-v2.0_sample.json"
  return path, request.getfixturevalue("official_tok"), 14, 6


def _oracle_logits(features, index):
  """Logits peaked at the gold span of answers[0] ([CLS] for no answer)."""
  start = np.full(features["input_ids"].shape, -10.0, np.float32)
  end = start.copy()
  rows = np.arange(len(start))
  start[rows, features["start_positions"]] = 10.0
  end[rows, features["end_positions"]] = 10.0
  answerable = ~np.array([index.examples[e].is_impossible for e in index.example_index])
  start[answerable, 0] = end[answerable, 0] = 0.0  # Null below any gold span.
  return start, end


def test_every_surviving_gold_span_maps_back_to_its_answer(dev_v1):
  features, index, counts = dev_v1.features, dev_v1.index, dev_v1.counts
  assert counts["examples"] == dev_v1.questions and counts["answer_not_in_context"] == 0
  assert counts["features"] == len(features["input_ids"]) > dev_v1.questions
  found, matches = set(), 0
  for f in np.flatnonzero(features["start_positions"] > 0):
    e = index.example_index[f]
    if e in found:
      continue
    found.add(e)
    s, t = features["start_positions"][f], features["end_positions"][f]
    text = index.examples[e].context[index.char_start[f, s] : index.char_end[f, t]]
    matches += metrics.normalize_answer(text) == metrics.normalize_answer(index.examples[e].answers[0])
  share = matches / len(found)
  print(f"gold spans recovered: {matches}/{len(found)} = {share:.4f}")
  assert len(found) == dev_v1.questions  # Every answer lies inside some window.
  assert share > 0.995  # The rest start or end inside a piece ("1990s" for "1990").


def test_oracle_logits_score_about_100_on_the_whole_v1_dev_set(dev_v1):
  start, end = _oracle_logits(dev_v1.features, dev_v1.index)
  scores, predictions, null_odds = squad.evaluate(start, end, dev_v1.index, version_2=False)
  print(scores)
  assert scores["total"] == dev_v1.questions and scores["missing"] == 0 and not null_odds
  assert scores["exact_match"] > 99.5 and scores["f1"] > 99.5
  assert len(predictions) == dev_v1.questions


def test_features_layout(dev_v1):
  features, index, tok = dev_v1.features, dev_v1.index, dev_v1.tok
  ids, types, mask = (features[k] for k in ("input_ids", "token_type_ids", "attention_mask"))
  assert ids.shape[1] == dev_v1.max_seq_length and (ids[:, 0] == tok.cls_id).all()
  lengths = mask.sum(1)
  assert (ids[np.arange(len(ids)), lengths - 1] == tok.sep_id).all()
  first = index.examples[0]
  question = tok.encode(first.question)
  assert ids[0, 1 : len(question) + 1].tolist() == question
  assert (types[0, : len(question) + 2] == 0).all() and (types[0, len(question) + 2 : lengths[0]] == 1).all()
  # Context ids equal the whole context's ids: word-by-word tokenisation loses nothing.
  context = ids[0, len(question) + 2 : lengths[0] - 1].tolist()
  assert context == tok.encode(first.context)[: len(context)]
  assert (index.char_start[0, : len(question) + 2] == -1).all()
  # p_mask (the XLNet head's): 0 at [CLS] and the context tokens only; is_impossible: "no answer in this window".
  context_or_cls = (index.char_start >= 0) | (np.arange(ids.shape[1]) == 0)
  np.testing.assert_array_equal(features["p_mask"], ~context_or_cls)
  assert (features["p_mask"][np.arange(len(ids)), lengths - 1] == 1).all()
  np.testing.assert_array_equal(features["is_impossible"], features["start_positions"] == 0)


@pytest.mark.parametrize(
  "vocab",
  [
    "generated",
    pytest.param(
      "official",
      marks=needs_data("the official vocabulary, whose pieces hold the accented and other non-ASCII characters"),
    ),
  ],
)
def test_offsets_survive_normalisation(vocab, request):
  tok = request.getfixturevalue("tok" if vocab == "generated" else "official_tok")
  context = "Łazienki's ``Grand'' café measured 2½ metres; NAÏVE İstanbul visitors paid \u20ac5 (about 360—an odd sum)."
  answers = ["2½ metres", "café", "NAÏVE İstanbul", "``Grand''", "360—an odd sum", "Łazienki", "\u20ac5"]
  (tokenized,) = squad.tokenize_contexts([context], tok)
  assert tokenized.ids.tolist() == tok.encode(context)
  for answer in answers:
    example = squad.Example("q", "what?", context, (answer,), context.index(answer), False)
    features, index = squad.make_features([example], tok, max_seq_length=96)
    s, e = features["start_positions"][0], features["end_positions"][0]
    assert context[index.char_start[0, s] : index.char_end[0, e]] == answer


def test_doc_stride_windows_cover_the_context_and_max_context_is_unique(tok):
  context = " ".join(f"word{i} is here." for i in range(120))
  example = squad.Example("q", "where is word99?", context, ("word99",), context.index("word99 "), False)
  counts = collections.Counter()
  features, index = squad.make_features([example], tok, max_seq_length=64, doc_stride=16, training=True, counts=counts)
  n_context = len(tok.encode(context))
  covered = collections.Counter()
  for f in range(len(index.example_index)):
    inside = index.char_start[f] >= 0
    covered.update(index.char_start[f][inside & index.max_context[f]].tolist())
  assert len(features["input_ids"]) > 3
  # Every context token is the max-context token of exactly one window.
  assert sum(covered.values()) == n_context
  assert counts["answer_outside_window"] == len(features["input_ids"]) - np.sum(features["start_positions"] > 0)
  # Windows start doc_stride tokens apart.
  first_tokens = [index.char_start[f][index.char_start[f] >= 0][0] for f in range(2)]
  (tokenized,) = squad.tokenize_contexts([context], tok)
  assert first_tokens[1] == tokenized.starts[16]


def test_v2_oracle_and_null_answers(v2_dev, tmp_path):
  path, tok, questions, unanswerable = v2_dev
  dataset = squad.load_json(path)
  examples = squad.read_examples(dataset)
  assert len(examples) == questions and sum(e.is_impossible for e in examples) == unanswerable
  features, index = squad.make_features(examples, tok, max_seq_length=128, doc_stride=32, dataset=dataset)
  start, end = _oracle_logits(features, index)
  scores, predictions, null_odds = squad.evaluate(start, end, index, version_2=True)
  assert scores["exact"] == scores["f1"] == 100.0
  assert scores["NoAns_total"] == unanswerable and scores["HasAns_total"] == questions - unanswerable
  assert all((predictions[e.qid] == "") == e.is_impossible for e in examples)
  assert all((null_odds[e.qid] > 0) == e.is_impossible for e in examples)
  paths = squad.write_predictions(tmp_path, predictions, null_odds)
  assert [p.name for p in paths] == ["predictions.json", "null_odds.json"]
  assert json.loads(paths[0].read_text()) == predictions
  # The official script's input: the same scores from the files.
  assert metrics.squad_v2(dataset, json.loads(paths[0].read_text()))["exact"] == 100.0


def test_v2_threshold_is_chosen_on_dev(v2_dev):
  """Null scores raised for every question: threshold 0 fails, the sweep recovers."""
  path, tok, questions, unanswerable = v2_dev
  dataset = squad.load_json(path)
  features, index = squad.make_features(
    squad.read_examples(dataset), tok, max_seq_length=128, doc_stride=32, dataset=dataset
  )
  start, end = _oracle_logits(features, index)
  # Null odds: answerable 30 - 20 = +10, unanswerable 50 - (-20) = +70.
  start[:, 0] += 15.0
  end[:, 0] += 15.0
  fixed, _, _ = squad.evaluate(start, end, index, version_2=True, null_threshold=0.0)
  assert fixed["exact"] == pytest.approx(100 * unanswerable / questions)  # Everything "no answer".
  chosen, predictions, null_odds = squad.evaluate(start, end, index, version_2=True)
  assert chosen["exact"] == chosen["f1"] == chosen["best_f1"] == 100.0
  threshold = chosen["null_score_diff_threshold"]
  assert threshold == chosen["best_f1_thresh"]
  answerable = [q for q, p in predictions.items() if p]
  assert len(answerable) == questions - unanswerable and all(null_odds[q] <= threshold for q in answerable)
  assert squad.apply_null_threshold({"a": "x", "b": "y"}, {"a": 1.0, "b": -1.0}, 0.0) == {"a": "", "b": "y"}


def test_answer_not_in_context_is_skipped_for_training_and_kept_for_eval(tok, caplog):
  good = squad.Example("good", "who?", "Alice met Bob.", ("Bob",), 10, False)
  bad = squad.Example("bad", "who?", "Alice met Bob.", ("Carol",), 10, False)
  counts = collections.Counter()
  with caplog.at_level(logging.WARNING):
    features, index = squad.make_features([good, bad], tok, max_seq_length=32, training=True, counts=counts)
  assert counts["answer_not_in_context"] == 1 and [e.qid for e in index.examples] == ["good"]
  assert len(features["input_ids"]) == 1 and "question bad" in caplog.text
  features, index = squad.make_features([good, bad], tok, max_seq_length=32)
  assert [e.qid for e in index.examples] == ["good", "bad"]
  assert features["start_positions"][1] == 0


def test_long_question_is_truncated_and_counted(tok):
  example = squad.Example("q", "why " * 100, "Because it rained.", ("it rained",), 8, False)
  counts = collections.Counter()
  features, index = squad.make_features([example], tok, max_seq_length=96, max_query_length=64, counts=counts)
  assert counts["truncated_questions"] == 1
  assert (features["token_type_ids"][0, :66] == 0).all()  # [CLS] + 64 + [SEP].
  s, e = features["start_positions"][0], features["end_positions"][0]
  assert example.context[index.char_start[0, s] : index.char_end[0, e]] == "it rained"
  with pytest.raises(ValueError, match="leaves no room"):
    squad.make_features([example], tok, max_seq_length=64, max_query_length=64)


def test_json_and_zip_load_the_same(tmp_path, generated_squad):
  dataset = squad.load_json(generated_squad / "dev-v2.0.json")
  with zipfile.ZipFile(tmp_path / "dev-v2.0.json.zip", "w") as archive:
    archive.writestr("dev-v2.0.json", json.dumps(dataset))
  assert squad.load_json(tmp_path / "dev-v2.0.json.zip") == dataset
  with pytest.raises(FileNotFoundError):
    squad.load_json(tmp_path / "missing.json")


def _oracle_xlnet_outputs(features):
  """The XLNet head's outputs with the gold span as the best pair of every window ([CLS] for "no answer here"),
  answerability logits +10 where the window holds no answer, -10 where it does."""
  rows = len(features["input_ids"])
  start_index = np.stack([features["start_positions"], features["start_positions"] + 1], 1)
  end_index = np.stack([features["end_positions"], features["end_positions"] + 1] * 2, 1)  # start-major pairs
  return {
    "start_top_log_probs": np.tile(np.log([0.9, 0.1]), (rows, 1)).astype(np.float32),
    "start_top_index": start_index,
    "end_top_log_probs": np.tile(np.log([0.9, 0.1, 0.9, 0.1]), (rows, 1)).astype(np.float32),
    "end_top_index": end_index,
    "cls_logits": np.where(features["is_impossible"] == 1, 10.0, -10.0).astype(np.float32),
  }


@pytest.mark.parametrize("head", ["xlnet", "bert"])
def test_tasks_interface_for_squad_v2(head, generated_squad, tok, tmp_path):
  config = config_lib.finetuning("squad_v2", str(tmp_path)).task
  config.update(
    dict(files={"train": "", "dev": str(generated_squad / "dev-v2.0.json")}, max_seq_length=128, doc_stride=32)
  )
  config.head = head
  spec = tasks.get_spec(config)
  assert (spec.head, spec.main_metric) == ({"xlnet": "span_xlnet", "bert": "span"}[head], "f1")
  data = tasks.load_task(config, tok, "dev")
  if head == "xlnet":
    outputs = _oracle_xlnet_outputs(data.features)
  else:
    start, end = _oracle_logits(data.features, data.index)
    outputs = {"start_logits": start, "end_logits": end}
  assert tasks.evaluate(config, outputs, data)["f1"] == 100.0
  paths = tasks.write_predictions(config, outputs, data, tmp_path / "out")
  names = ["predictions.json", "null_odds.json", *(["nbest_predictions.json"] if head == "xlnet" else [])]
  assert [p.name for p in paths] == [*names, squad.OFFICIAL_V2_FILE]
  official = json.loads(paths[-1].read_text())
  assert list(official) == list(squad.OFFICIAL_V2_KEYS)
  assert official["exact"] == official["f1"] == official["best_f1"] == 100.0
  assert (official["HasAns_total"], official["NoAns_total"]) == (18, 12)
  with pytest.raises(FileNotFoundError, match="config.task.files"):
    tasks.load_task(config, tok, "train")


def test_bad_span_head_settings_are_refused(tmp_path):
  config = config_lib.finetuning("squad_v2", str(tmp_path)).task
  assert tasks.get_spec(config).head == tasks.get_spec("squad_v2").head == "span_xlnet"
  assert tasks.get_spec("squad_v1").head == "span"
  config.head = "xl"
  with pytest.raises(ValueError, match="config.task.head='xl': use 'xlnet'"):
    tasks.get_spec(config)
  config.update(head="xlnet", start_n_top=0)
  with pytest.raises(ValueError, match=r"config.task.start_n_top=0: choose between 1 and max_seq_length \(384\)"):
    tasks.get_spec(config)


# ---------------------------------------------------------------------------
# The original release's SQuAD 2.0 decoding (squad_utils.py accumulate_predictions_v2 + write_predictions_v2),
# written here from its description in the original's own terms (doc_offset, the window's context length, the
# token_is_max_context map, inclusive end offsets), against squad.postprocess_xlnet on random head outputs.


def _max_context_windows(spans, position):
  """The original's _check_is_max_context: the window where `position` has the most context (the first on ties)."""
  best, best_window = None, None
  for w, (offset, length) in enumerate(spans):
    if offset <= position < offset + length:
      score = min(position - offset, offset + length - 1 - position) + 0.01 * length
      if best is None or score > best:
        best, best_window = score, w
  return best_window


def _random_windows(rng, seq_length, query_length, doc_stride, num_tokens):
  """The original's doc-span loop: (offset, length) of each window over `num_tokens` context tokens."""
  max_doc, spans, offset = seq_length - query_length - 3, [], 0
  while True:
    length = min(num_tokens - offset, max_doc)
    spans.append((offset, length))
    if offset + length == num_tokens:
      return spans
    offset += min(length, doc_stride)


def _random_instance(rng, seq_length):
  """Examples of repeated words (so texts repeat; some tokens start at the space before them, so strip() matters),
  cut into windows: per window the original's feature fields, and albert_jax's FeatureIndex."""
  examples, windows = [], []
  query_length, doc_stride = int(rng.integers(1, 6)), int(rng.integers(1, 8))
  for e in range(int(rng.integers(1, 6))):
    words = [f"w{i}" for i in rng.integers(0, 12, int(rng.integers(3, 3 * seq_length)))]
    context, starts, ends = "", [], []
    for word in words:
      context += " " if context else ""
      starts.append(len(context) - (len(context) > 0 and rng.random() < 0.2))  # some tokens hold the space
      context += word
      ends.append(len(context))
    examples.append(squad.Example(f"q{e}", "?", context, (), -1, True))
    spans = _random_windows(rng, seq_length, query_length, doc_stride, len(words))
    for w, (offset, length) in enumerate(spans):
      inside = range(offset, offset + length)
      windows.append(
        dict(
          example=e,
          doc_offset=query_length + 2,  # [CLS] question [SEP]
          tok_start_to_orig=[starts[i] for i in inside],
          tok_end_to_orig=[ends[i] - 1 for i in inside],  # inclusive, as the original
          max_context={query_length + 2 + i - offset: _max_context_windows(spans, i) == w for i in inside},
        )
      )
  return examples, windows


def _feature_index(examples, windows, seq_length):
  char_start = np.full((len(windows), seq_length), -1, np.int32)
  char_end, max_context = char_start.copy(), np.zeros(char_start.shape, bool)
  for f, w in enumerate(windows):
    where = slice(w["doc_offset"], w["doc_offset"] + len(w["tok_start_to_orig"]))
    char_start[f, where] = w["tok_start_to_orig"]
    char_end[f, where] = np.array(w["tok_end_to_orig"]) + 1
    for position, is_max in w["max_context"].items():
      max_context[f, position] = is_max
  return squad.FeatureIndex(
    examples, None, np.array([w["example"] for w in windows]), char_start, char_end, max_context
  )


def _random_head_outputs(rng, index, start_n_top, end_n_top):
  """What the head returns: top-k of masked log-softmaxes (the ends per start, start-major) and answerability
  logits; the masked positions (p_mask) are all but [CLS] and the context, so tiny windows rank them too."""
  p_mask = ((index.char_start < 0) & (np.arange(index.char_start.shape[1]) > 0)).astype(np.float64)
  log_softmax = lambda x: (
    x - x.max(-1, keepdims=True) - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True))
  )
  top = lambda x, k: (
    np.take_along_axis(x, np.argsort(-x, -1, kind="stable")[..., :k], -1),
    np.argsort(-x, -1, kind="stable")[..., :k],
  )
  start_log_probs, start_index = top(log_softmax(rng.normal(0, 3, p_mask.shape) - 1e30 * p_mask), start_n_top)
  end = log_softmax(rng.normal(0, 3, (*p_mask.shape[:1], start_n_top, p_mask.shape[1])) - 1e30 * p_mask[:, None])
  end_log_probs, end_index = top(end, end_n_top)
  f = len(p_mask)
  return {
    "start_top_log_probs": start_log_probs.astype(np.float32),
    "start_top_index": start_index,
    "end_top_log_probs": end_log_probs.reshape(f, -1).astype(np.float32),
    "end_top_index": end_index.reshape(f, -1),
    "cls_logits": rng.normal(0, 3, f).astype(np.float32),
  }


def _original_v2_decoding(examples, windows, outputs, n_best_size, max_answer_length, seen):
  """accumulate_predictions_v2 then write_predictions_v2 (threshold None), per example; counts what it met."""
  start_n_top = outputs["start_top_index"].shape[1]
  end_n_top = outputs["end_top_index"].shape[1] // start_n_top
  predictions, null_odds, nbest = {}, {}, {}
  for e, example in enumerate(examples):
    features = [f for f, w in enumerate(windows) if w["example"] == e]
    seen["multi_window"] += len(features) > 1
    score_null, prelim = 1000000.0, []
    for f in features:
      w, out = windows[f], {k: v[f] for k, v in outputs.items()}
      score_null = min(score_null, float(out["cls_logits"]))
      n_context = len(w["tok_start_to_orig"])
      for i in range(start_n_top):
        for j in range(end_n_top):
          s, t = int(out["start_top_index"][i]), int(out["end_top_index"][i * end_n_top + j])
          if not (0 <= s - w["doc_offset"] < n_context) or t - w["doc_offset"] >= n_context:
            continue
          if not w["max_context"].get(s, False):
            seen["not_max_context"] += 1
            continue
          if t < s:
            seen["end_before_start"] += 1
            continue
          if t - s + 1 > max_answer_length:
            seen["too_long"] += 1
            continue
          slp, elp = float(out["start_top_log_probs"][i]), float(out["end_top_log_probs"][i * end_n_top + j])
          prelim.append((f, s - w["doc_offset"], t - w["doc_offset"], slp, elp))
    prelim = sorted(prelim, key=lambda c: c[3] + c[4], reverse=True)  # stable: ties keep insertion order
    entries, texts = [], set()
    for f, s, t, slp, elp in prelim:
      if len(entries) >= n_best_size:
        break
      w = windows[f]
      raw = example.context[w["tok_start_to_orig"][s] : w["tok_end_to_orig"][t] + 1]
      seen["stripped"] += raw != raw.strip()
      if raw.strip() in texts:
        seen["duplicate"] += 1
        continue
      texts.add(raw.strip())
      entries.append((raw.strip(), slp, elp))
    if not entries:
      seen["no_valid_span"] += 1
      entries = [("", -1e6, -1e6)]
    totals = np.array([slp + elp for _, slp, elp in entries])
    probabilities = np.exp(totals - totals.max()) / np.exp(totals - totals.max()).sum()
    predictions[example.qid], null_odds[example.qid] = entries[0][0], score_null
    nbest[example.qid] = [(text, p, slp, elp) for (text, slp, elp), p in zip(entries, probabilities)]
  return predictions, null_odds, nbest


def test_v2_decoding_equals_the_original_algorithm_on_random_outputs():
  rng = np.random.default_rng(0)
  seen = collections.Counter()
  for _ in range(60):
    seq_length = int(rng.integers(12, 40))
    start_n_top, end_n_top = int(rng.integers(1, 6)), int(rng.integers(1, 6))
    n_best_size, max_answer_length = int(rng.integers(1, 21)), int(rng.integers(1, 8))
    examples, windows = _random_instance(rng, seq_length)
    index = _feature_index(examples, windows, seq_length)
    outputs = _random_head_outputs(rng, index, start_n_top, end_n_top)
    want = _original_v2_decoding(examples, windows, outputs, n_best_size, max_answer_length, seen)
    got = squad.postprocess_xlnet(outputs, index, n_best_size, max_answer_length)
    assert got[0] == want[0]
    assert got[1] == want[1]  # the same float32 minimum
    for qid, entries in want[2].items():
      assert [e["text"] for e in got[2][qid]] == [e[0] for e in entries]
      for k, key in enumerate(("probability", "start_log_prob", "end_log_prob"), start=1):
        np.testing.assert_allclose([e[key] for e in got[2][qid]], [e[k] for e in entries], rtol=1e-12)
  print(dict(seen))
  # The instances met every rule of the algorithm.
  assert min(seen[k] for k in ("multi_window", "not_max_context", "end_before_start", "too_long")) > 10
  assert min(seen[k] for k in ("stripped", "duplicate", "no_valid_span")) > 0


def test_v2_decoding_refuses_outputs_of_another_head(tok):
  example = squad.Example("q", "who?", "Alice met Bob.", ("Bob",), 10, False)
  _, index = squad.make_features([example], tok, max_seq_length=32)
  with pytest.raises(ValueError, match="XLNet head's outputs.*'start_top_log_probs'"):
    squad.postprocess_xlnet({"start_logits": np.zeros((1, 32)), "end_logits": np.zeros((1, 32))}, index)


def test_v2_threshold_follows_the_official_script_not_evaluate_v2():
  """The original's evaluate_v2 would write {q1, '', ''} here (answering only below the threshold) and report F1
  33.3 (re-applying the script's 1.0 cut-off to these logits); the official semantics give 100 for the file."""
  qas = [
    {"id": "q1", "question": "?", "answers": [{"text": "red fox", "answer_start": 0}]},
    {"id": "q2", "question": "?", "answers": [], "is_impossible": True},
    {"id": "q3", "question": "?", "answers": [{"text": "blue", "answer_start": 8}]},
  ]
  dataset = {"data": [{"paragraphs": [{"context": "red fox blue", "qas": qas}]}]}
  index = squad.FeatureIndex([], dataset, *(np.zeros((0, 1), np.int32) for _ in range(4)))
  answers, null_odds = {"q1": "red fox", "q2": "x", "q3": "blue"}, {"q1": 1.5, "q2": 3.0, "q3": 2.0}
  scores, predictions, _ = squad.score(answers, null_odds, index, version_2=True)
  assert (scores["best_f1"], scores["best_f1_thresh"]) == (100.0, 2.0)
  assert predictions == {"q1": "red fox", "q2": "", "q3": "blue"}  # q3's odds equal the threshold: answered
  assert scores["exact"] == scores["f1"] == 100.0 == metrics.squad_v2(dataset, predictions)["f1"]
