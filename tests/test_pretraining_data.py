"""The streamed pretraining data: ALBERT's SOP pairs and masks, deterministic and resumable.

On a generated corpus (1,200 documents of 2 to 30 sentences) with a generated vocabulary: the subject is the
pipeline, which needs some text and some vocabulary, not particular ones.
"""

import collections
import json

import numpy as np
import pytest
import tensorflow_datasets as tfds

from albert_jax import config_lib
from albert_jax.data import pipeline, tfds_builders
from albert_jax.tokenizer import Tokenizer
from tests import fixtures

SEQ, PREDICTIONS = 128, 20


def _config(**overrides):
  """config_lib's data section (its defaults: the paper's masking) on files, with a small shuffle window."""
  config = config_lib.pretraining().data
  config.update(
    dict(source="files", max_seq_length=SEQ, max_predictions_per_seq=PREDICTIONS, shuffle_window=16, read_threads=2)
  )
  config.update(overrides)
  return config


@pytest.fixture(scope="module")
def tokenizer(generated_vocab):
  return Tokenizer(generated_vocab)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def text_config(generated_corpus, data_dir):
  return _config(files=str(generated_corpus), data_dir=data_dir)


@pytest.fixture(scope="module")
def text(text_config, tokenizer):
  return pipeline.document_source(text_config, tokenizer, "train")


def _examples(
  source, tokenizer, *, num_epochs=1, seed=0, process_index=0, process_count=1, shuffle_window=1, stats=None, **options
):
  options = pipeline.PairingOptions(**{"max_seq_length": SEQ, "max_predictions_per_seq": PREDICTIONS, **options})
  return list(
    pipeline.example_dataset(
      source,
      options,
      pipeline.Vocab.from_tokenizer(tokenizer),
      seed=seed,
      process_index=process_index,
      process_count=process_count,
      num_epochs=num_epochs,
      shuffle_window=shuffle_window,
      read_threads=2,
      stats=stats,
    )
  )


def _original_ids(example):
  """input_ids with the masked tokens put back."""
  ids = example["input_ids"].copy()
  n = int(example["masked_lm_weights"].sum())
  ids[example["masked_lm_positions"][:n]] = example["masked_lm_ids"][:n]
  return ids


def _segments(example, tokenizer):
  ids = _original_ids(example)
  length = int(example["input_mask"].sum())
  seps = np.flatnonzero(ids[:length] == tokenizer.sep_id)
  return ids[1 : seps[0]], ids[seps[0] + 1 : length - 1]


@pytest.fixture(scope="module")
def many(text, tokenizer):
  """Over 10,000 examples (several epochs of the corpus), with their counters."""
  stats = pipeline.PipelineStats()
  examples = _examples(text, tokenizer, num_epochs=6, stats=stats)
  assert len(examples) >= 10_000
  return examples, stats.snapshot()


def test_batches_have_the_documented_fields_shapes_and_dtypes(text_config, tokenizer):
  dataset, _ = pipeline.make_pretraining_data(
    text_config, tokenizer, batch_size=8, seed=0, process_index=0, process_count=1
  )
  batch = next(iter(dataset))
  expected = {
    "input_ids": ((8, SEQ), np.int32),
    "input_mask": ((8, SEQ), np.int32),
    "token_type_ids": ((8, SEQ), np.int32),
    "masked_lm_positions": ((8, PREDICTIONS), np.int32),
    "masked_lm_ids": ((8, PREDICTIONS), np.int32),
    "masked_lm_weights": ((8, PREDICTIONS), np.float32),
    "sentence_order_label": ((8,), np.int32),
  }
  assert {k: (v.shape, v.dtype) for k, v in batch.items()} == expected


def test_sequences_are_cls_a_sep_b_sep_within_max_seq_length(many, tokenizer):
  for example in many[0]:
    ids, mask, types = _original_ids(example), example["input_mask"], example["token_type_ids"]
    length = int(mask.sum())
    assert length <= SEQ and mask[:length].all() and not ids[length:].any()
    assert ids[0] == tokenizer.cls_id and ids[length - 1] == tokenizer.sep_id
    sep = np.flatnonzero(ids[:length] == tokenizer.sep_id)
    assert len(sep) == 2 and 1 < sep[0] < length - 2
    assert not types[: sep[0] + 1].any() and types[sep[0] + 1 : length].all()
    assert not types[length:].any()


def test_masked_share_is_15_percent_within_budget_of_whole_words(many, tokenizer):
  examples, _ = many
  masked = maskable = 0
  for example in examples:
    ids, n = _original_ids(example), int(example["masked_lm_weights"].sum())
    length = int(example["input_mask"].sum())
    content = np.flatnonzero(~tokenizer.is_special[ids[:length]])
    positions = example["masked_lm_positions"][:n]
    assert n <= min(PREDICTIONS, max(1, round(0.15 * len(content))))
    assert not example["masked_lm_weights"][n:].any() and not positions[n:].any()
    assert (np.diff(positions) > 0).all()
    assert not tokenizer.is_special[ids[positions]].any()
    # Whole words: a continuation piece is masked exactly when the piece before
    # it is (unless that one is special: then it starts a word).
    is_masked = np.zeros(SEQ, bool)
    is_masked[positions] = True
    continuation = ~tokenizer.is_word_start[ids[1:length]] & ~tokenizer.is_special[ids[: length - 1]]
    follows = np.flatnonzero(continuation) + 1
    assert (is_masked[follows] == is_masked[follows - 1]).all()
    masked += n
    maskable += len(content)
  assert abs(masked / maskable - 0.15) < 0.005


def test_ngram_sizes_are_drawn_with_p_proportional_to_1_over_n(many):
  counts = many[1]
  drawn = np.array([counts[f"ngram_drawn_{n}"] for n in (1, 2, 3)], float)
  np.testing.assert_allclose(drawn / drawn.sum(), np.array([6, 3, 2]) / 11, atol=0.02)
  # Masked n-grams are shorter than drawn ones, as in the original: a long
  # n-gram is shortened to fit the budget or skipped when it overlaps.
  masked = np.array([counts[f"ngram_{n}"] for n in (1, 2, 3)], float)
  assert masked[0] / masked.sum() > 6 / 11 and masked[2] / masked.sum() < 2 / 11


def test_replacements_are_80_percent_mask_10_random_10_unchanged(many, tokenizer):
  kinds = collections.Counter()
  for example in many[0]:
    n = int(example["masked_lm_weights"].sum())
    shown = example["input_ids"][example["masked_lm_positions"][:n]]
    labels = example["masked_lm_ids"][:n]
    kinds["mask"] += int((shown == tokenizer.mask_id).sum())
    kinds["same"] += int((shown == labels).sum())
    kinds["random"] += int(((shown != labels) & (shown != tokenizer.mask_id)).sum())
    assert not tokenizer.is_special[shown[shown != tokenizer.mask_id]].any()
  total = sum(kinds.values())
  assert abs(kinds["mask"] / total - 0.8) < 0.02
  assert abs(kinds["same"] / total - 0.1) < 0.02
  assert abs(kinds["random"] / total - 0.1) < 0.02


def test_sop_labels_are_balanced_and_short_targets_about_10_percent(many):
  examples, counts = many
  labels = np.array([int(e["sentence_order_label"]) for e in examples])
  assert abs(labels.mean() - 0.5) < 0.02
  chunks = counts["sequences"] + counts.get("skipped_one_token_chunks", 0)
  assert abs(counts["short_targets"] / chunks - 0.1) < 0.015
  # A short target is uniform in [2, SEQ - 3], but chunks end at sentence ends,
  # past the target: fewer than the 5% of short targets under SEQ / 2 stay there.
  lengths = np.array([int(e["input_mask"].sum()) for e in examples])
  assert (lengths < SEQ // 2).mean() > 0.03


def _find(haystack: np.ndarray, needle: np.ndarray) -> list[int]:
  """Start positions of `needle` in `haystack` (token arrays)."""
  raw, pattern = haystack.astype("<i4").tobytes(), needle.astype("<i4").tobytes()
  found, start = [], raw.find(pattern)
  while start >= 0:
    if start % 4 == 0:
      found.append(start // 4)
    start = raw.find(pattern, start + 1)
  return found


def test_swapped_pairs_are_b_before_a_of_the_document(many, text, tokenizer):
  checked = collections.Counter()
  for example in many[0][:3000]:
    first, second = _segments(example, tokenizer)
    doc = text[int(example["document"])]["tokens"]
    label = int(example["sentence_order_label"])
    earlier, later = (second, first) if label else (first, second)
    if len(first) + len(second) < SEQ - 3:  # Not truncated: the text is contiguous.
      assert _find(doc, np.concatenate([earlier, later])), example
      checked[label] += 1
    else:  # Truncated: still two pieces of the document, the earlier one first.
      starts_e, starts_l = _find(doc, earlier), _find(doc, later)
      assert starts_e and starts_l and min(starts_e) + len(earlier) <= max(starts_l)
  assert checked[0] > 100 and checked[1] > 100


def _mask_statistics(examples, counts, tokenizer) -> dict[str, float]:
  """The masking's shares: masked of maskable tokens, n-gram sizes drawn and masked, [MASK] / same / random."""
  stats = {"masked": counts["masked_tokens"] / counts["maskable_tokens"]}
  for kind in ("ngram_drawn", "ngram"):
    total = sum(counts[f"{kind}_{n}"] for n in (1, 2, 3))
    stats.update({f"{kind}_{n}": counts[f"{kind}_{n}"] / total for n in (1, 2, 3)})
  shown = np.concatenate([e["input_ids"][e["masked_lm_positions"][e["masked_lm_weights"] > 0]] for e in examples])
  labels = np.concatenate([e["masked_lm_ids"][e["masked_lm_weights"] > 0] for e in examples])
  stats["mask"] = np.mean(shown == tokenizer.mask_id)
  stats["same"] = np.mean(shown == labels)
  return stats


def test_nsp_pairs_are_half_next_half_from_another_document_with_the_same_masking(many, text, tokenizer):
  stats = pipeline.PipelineStats()
  examples = _examples(text, tokenizer, num_epochs=2, stats=stats, sentence_task="nsp")
  labels = np.array([int(e["sentence_order_label"]) for e in examples])
  assert len(examples) > 4000 and abs(labels.mean() - 0.5) < 0.02
  # Every document's tokens end to end, to find which documents hold a segment.
  docs = [np.asarray(text[i]["tokens"]) for i in range(len(text))]
  starts = np.cumsum([0] + [len(d) + 1 for d in docs])
  everything = np.concatenate([np.append(d, -1) for d in docs])
  checked = collections.Counter()
  for example in examples[:1500]:
    first, second = _segments(example, tokenizer)
    own = int(example["document"])
    assert _find(docs[own], first), "A is a piece of its own document"
    holders = set(np.searchsorted(starts, _find(everything, second), side="right") - 1)
    if example["sentence_order_label"]:  # random next: B is a piece of another document (the same text may recur)
      assert holders - {own}, example
      checked["random"] += own not in holders
    else:  # is next: A then B, in order, in its own document
      assert own in holders
      if len(first) + len(second) < SEQ - 3:
        assert _find(docs[own], np.concatenate([first, second])), example
        checked["next"] += 1
  assert checked["random"] > 500 and checked["next"] > 200
  # The masking is the pipeline's, whatever the pairs.
  nsp, sop = _mask_statistics(examples, stats.snapshot(), tokenizer), _mask_statistics(*many, tokenizer)
  for key in sop:
    assert abs(nsp[key] - sop[key]) < 0.01, (key, nsp[key], sop[key])


def test_same_seed_gives_the_same_batches(text_config, tokenizer):
  def batches(seed):
    dataset, _ = pipeline.make_pretraining_data(
      text_config, tokenizer, batch_size=4, seed=seed, process_index=0, process_count=1
    )
    iterator = iter(dataset)
    return [next(iterator) for _ in range(5)]

  first, again, other = batches(1), batches(1), batches(2)
  for a, b in zip(first, again):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  assert not all(np.array_equal(a["input_ids"], b["input_ids"]) for a, b in zip(first, other))


def test_each_epoch_draws_new_pairs_and_masks(text, tokenizer):
  by_epoch = collections.defaultdict(dict)
  for example in _examples(text, tokenizer, num_epochs=2):
    by_epoch[int(example["epoch"])].setdefault(int(example["document"]), []).append(example)
  doc = next(iter(by_epoch[0]))
  first, second = by_epoch[0][doc], by_epoch[1][doc]
  assert not all(len(a) == len(b) and np.array_equal(a["input_ids"], b["input_ids"]) for a, b in zip(first, second))
  positions = [e["masked_lm_positions"] for e in first[:1] + second[:1]]
  assert not np.array_equal(*positions)


def test_restored_iterator_continues_with_the_same_batches(text_config, tokenizer):
  dataset, _ = pipeline.make_pretraining_data(
    text_config, tokenizer, batch_size=4, seed=3, process_index=0, process_count=1
  )
  iterator = iter(dataset)
  for _ in range(7):  # Mid-window and mid-document.
    next(iterator)
  state = json.loads(json.dumps(iterator.get_state()))  # As a checkpoint stores it.
  expected = [next(iterator) for _ in range(30)]
  restored = iter(dataset)
  restored.set_state(state)
  for want in expected:
    got = next(restored)
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])


def test_two_processes_read_every_document_of_an_epoch_once(text, tokenizer):
  alone = _examples(text, tokenizer)
  shards = [_examples(text, tokenizer, process_index=i, process_count=2) for i in (0, 1)]
  docs = [{int(e["document"]) for e in shard} for shard in shards]
  assert not docs[0] & docs[1]
  assert docs[0] | docs[1] == set(range(len(text)))
  assert sum(map(len, shards)) == len(alone)
  key = lambda e: (int(e["document"]), e["input_ids"].tobytes())
  assert sorted(map(key, shards[0] + shards[1])) == sorted(map(key, alone))


def test_validation_split_is_held_out(text_config, tokenizer, text):
  validation = pipeline.document_source(text_config, tokenizer, "validation")
  assert 1 <= len(validation) < len(text)
  train_docs = {text[i]["tokens"].tobytes() for i in range(len(text))}
  assert all(validation[i]["tokens"].tobytes() not in train_docs for i in range(len(validation)))


@pytest.fixture
def corpus_dir(tmp_path):
  def write(name, content: bytes):
    path = tmp_path / name
    path.write_bytes(content)
    return str(path)

  return write


def _lines_corpus(*documents):
  return "\n\n".join("\n".join(doc) for doc in documents).encode() + b"\n"


def test_bad_files_and_lines_are_skipped_and_counted(corpus_dir, tokenizer, data_dir):
  good = corpus_dir("good.txt", _lines_corpus(*fixtures.documents(3, seed=5)))
  empty = corpus_dir("empty.txt", b"")
  broken = corpus_dir(
    "broken.txt",
    _lines_corpus(
      ["The first sentence is fine.", "The second one is too."],
      ["A third sentence starts a new document.", "It ends here."],
    ).replace(b"second one", b"second \xff\xfe one"),
  )
  builder = tfds_builders.prepared_documents(
    "files", tokenizer, data_dir, files=[good, empty, broken], validation_percent=0
  )
  counts = builder.info.metadata["counts"]["train"]
  assert counts["unreadable_files"] == 1 and counts["bad_lines"] == 1
  assert counts["documents"] >= 3


def test_a_corpus_of_only_bad_files_says_what_to_do(corpus_dir, tokenizer, data_dir):
  empty = corpus_dir("empty.txt", b"")
  with pytest.raises(ValueError, match="no documents"):
    tfds_builders.prepared_documents("files", tokenizer, data_dir, files=[empty], validation_percent=0)
  with pytest.raises(FileNotFoundError, match="config.data.files"):
    tfds_builders.prepared_documents("files", tokenizer, data_dir, files=["/nonexistent/*.txt"])


def test_single_sentence_and_overlong_sentences(corpus_dir, tokenizer, data_dir):
  long_sentence = " ".join(["word"] * 3 * SEQ) + "."
  path = corpus_dir(
    "odd.txt",
    _lines_corpus(
      ["Only one sentence in this document, but several words."],
      ["Hi."],
      ["A short start.", long_sentence, "And a short end."],
    ),
  )
  builder = tfds_builders.prepared_documents("files", tokenizer, data_dir, files=path, validation_percent=0)
  assert builder.info.metadata["counts"]["train"]["single_sentence_documents"] == 2
  source = builder.as_data_source("train")
  stats = pipeline.PipelineStats()
  examples = _examples(source, tokenizer, stats=stats, short_seq_prob=0.0)
  counted = stats.snapshot()
  assert counted["split_within_sentence"] >= 1  # The single-sentence document.
  assert counted["truncated_pairs"] >= 1 and counted["truncated_tokens"] >= 2 * SEQ
  assert all(int(e["input_mask"].sum()) <= SEQ for e in examples)


def test_one_token_chunk_is_skipped_and_counted(tokenizer):
  ids = tokenizer.encode("This is a test")
  source = [
    {"tokens": np.array(ids[:1], np.int32), "sentence_lengths": np.array([1], np.int32)},
    {"tokens": np.array(ids, np.int32), "sentence_lengths": np.array([len(ids)], np.int32)},
  ]
  stats = pipeline.PipelineStats()
  examples = _examples(source, tokenizer, stats=stats, short_seq_prob=0.0)
  assert len(examples) == 1 and stats.snapshot()["skipped_one_token_chunks"] == 1


def test_vocab_size_mismatch_is_a_clear_error(text_config, tokenizer):
  with pytest.raises(ValueError, match="vocab_size=32000"):
    pipeline.make_pretraining_data(
      text_config, tokenizer, batch_size=4, seed=0, process_index=0, process_count=1, model_vocab_size=32000
    )


def test_batch_size_must_split_over_processes(text_config, tokenizer):
  with pytest.raises(ValueError, match="divisible"):
    pipeline.make_pretraining_data(text_config, tokenizer, batch_size=5, seed=0, process_index=0, process_count=2)


def test_catalog_dataset_is_tokenised_on_the_fly(tokenizer, data_dir):
  config = _config(source="wikipedia/20230601.en", data_dir=data_dir, validation_percent=10)
  with tfds.testing.mock_data(num_examples=40, policy=tfds.testing.MockPolicy.USE_CODE):
    train = pipeline.document_source(config, tokenizer, "train")
    validation = pipeline.document_source(config, tokenizer, "validation")
    assert len(train) + len(validation) == 40 and len(validation) >= 1
    record = train[0]
    assert record["tokens"].dtype == np.int32
    assert record["sentence_lengths"].sum() == len(record["tokens"])
    dataset, _ = pipeline.make_pretraining_data(
      config, tokenizer, batch_size=2, seed=0, process_index=0, process_count=1
    )
    batch = next(iter(dataset))
  assert batch["input_ids"].shape == (2, SEQ)


def test_builtin_corpus_prepares_and_streams(tokenizer, data_dir):
  config = _config(source="builtin", data_dir=data_dir)
  dataset, _ = pipeline.make_pretraining_data(config, tokenizer, batch_size=4, seed=0, process_index=0, process_count=1)
  assert next(iter(dataset))["input_ids"].shape == (4, SEQ)
  assert len(pipeline.document_source(config, tokenizer, "validation")) >= 1


def test_orbax_checkpoint_of_the_iterator_resumes_it(text_config, tokenizer, tmp_path):
  import grain  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  dataset, _ = pipeline.make_pretraining_data(
    text_config, tokenizer, batch_size=4, seed=5, process_index=0, process_count=1
  )
  iterator = iter(dataset)
  next(iterator)
  with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
    manager.save(1, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointSave(iterator)))
    manager.wait_until_finished()
    want = [next(iterator) for _ in range(3)]
    restored = iter(dataset)
    manager.restore(1, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointRestore(restored)))
  for expected in want:
    np.testing.assert_array_equal(next(restored)["input_ids"], expected["input_ids"])


def test_dataset_pickles_for_multiprocess_prefetch(text, tokenizer):
  import pickle  # pylint: disable=g-import-not-at-top

  options = pipeline.PairingOptions(max_seq_length=SEQ, max_predictions_per_seq=PREDICTIONS)
  dataset = pipeline.batch_dataset(
    pipeline.example_dataset(text, options, pipeline.Vocab.from_tokenizer(tokenizer), seed=0), 2
  )
  copy = pickle.loads(pickle.dumps(dataset))
  np.testing.assert_array_equal(next(iter(copy))["input_ids"], next(iter(dataset))["input_ids"])
