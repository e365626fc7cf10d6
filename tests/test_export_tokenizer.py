"""The exported tokenizer.json of the official vocabulary: AutoTokenizer on an export gives the ids of
`tokenizer.Tokenizer`, the ids the model was pretrained on, on every SST-2 dev sentence and WikiText-2 valid line
and on fill-mask prompts; and exactly where the fast tokenizer cannot follow (ALBERT's "9," rule, text glued to a
special token that normalisation rewrites), it is pinned here. (tests/test_export.py checks the same export
mechanics with a generated vocabulary, without the shared data.)"""

import json
import logging
import shutil
import sys

import pytest
import transformers

from albert_jax import checkpoints
from albert_jax import tokenizer as tokenizer_lib
from albert_jax.checkpoints import export
from tests import conftest, hf_reference
from tests.conftest import needs_data
from tests.test_export import TEXTS as EXPORT_TEXTS  # exported there with a generated vocabulary
from tests.test_tokenizer import DIGIT_COMMA_TEXTS, MASK_TEXTS

SMALL = dict(embedding_size=8, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24)
GLUED = [
  "Paris is the capital of [MASK].",
  "[MASK]'s capital is Paris.",
  "[MASK], he said",
  "of[MASK]is",
  "The [MASK]ing of the house",
  "x [MASK]$5",
  '[MASK]-like [MASK]"quoted" [MASK]9,',
]


@pytest.fixture(scope="module")
def converted(tmp_path_factory, shared_data):
  del shared_data  # skips without the shared data folder
  root = tmp_path_factory.mktemp("export_tokenizer")
  hf_reference.random_hf_model(root / "hf", vocab_size=30000, **SMALL)
  shutil.copyfile(conftest.SPM_MODEL, root / "hf" / "spiece.model")
  return checkpoints.convert(root / "hf", root / "converted")


@pytest.fixture(scope="module")
def generated_converted(tmp_path_factory, generated_vocab):
  """The same with the generated vocabulary."""
  root = tmp_path_factory.mktemp("export_tokenizer_generated")
  hf_reference.random_hf_model(root / "hf", vocab_size=tokenizer_lib.Tokenizer(generated_vocab).vocab_size, **SMALL)
  shutil.copyfile(generated_vocab, root / "hf" / "spiece.model")
  return checkpoints.convert(root / "hf", root / "converted")


@pytest.fixture(scope="module")
def exported(converted, tmp_path_factory):
  return export.export(converted, tmp_path_factory.mktemp("out") / "exported")


@pytest.fixture(scope="module")
def fast(shared_data):
  del shared_data
  return export.fast_tokenizer(conftest.SPM_MODEL)


@pytest.fixture(scope="module")
def ours():
  return tokenizer_lib.Tokenizer(conftest.SPM_MODEL)


@pytest.fixture(scope="module")
def corpus(shared_data):
  sst2 = (shared_data / "glue" / "SST-2" / "dev.tsv").read_text("utf-8").splitlines()[1:]
  wikitext = (shared_data / "text" / "wikitext-2-raw" / "wiki.valid.raw").read_text("utf-8").splitlines()
  assert len(sst2) == 872 and len(wikitext) == 3760
  return [line.split("\t")[0] for line in sst2] + wikitext


def _with_specials(ours, texts):
  return [[ours.cls_id, *ids, ours.sep_id] for ids in ours.encode_batch(texts)]


@needs_data("SST-2 dev and WikiText-2 valid through an export with the official vocabulary")
@pytest.mark.parametrize("use_fast", [True, False])
def test_auto_tokenizer_equals_tokenizer_on_every_line(exported, ours, corpus, use_fast):
  """4,632 lines; the "9," rule never fires in them, so this holds with the rule on (the default)."""
  hf = transformers.AutoTokenizer.from_pretrained(exported, use_fast=use_fast)
  # transformers 5 has one ALBERT tokenizer class; use_fast=False loads the same tokenizer.json.
  assert isinstance(hf, transformers.PreTrainedTokenizerFast)
  got = hf(corpus, verbose=False)
  assert got["input_ids"] == _with_specials(ours, corpus)
  assert all(not any(types) for types in got["token_type_ids"])


@needs_data("the official vocabulary's ids through its export")
def test_auto_tokenizer_equals_tokenizer_on_mask_texts_and_pairs(exported, ours):
  hf = transformers.AutoTokenizer.from_pretrained(exported)
  texts = MASK_TEXTS + GLUED + DIGIT_COMMA_TEXTS + EXPORT_TEXTS
  assert hf(texts)["input_ids"] == _with_specials(ours, texts)
  assert hf("The capital of [MASK] is Delhi.")["input_ids"] == [2, 14, 1057, 16, 4, 25, 5999, 9, 3]
  pair = hf("The capital of [MASK] is Delhi.", "It is in [MASK].")
  assert [pair["input_ids"], pair["token_type_ids"]] == list(
    ours.encode_pair(ours.encode("The capital of [MASK] is Delhi."), ours.encode("It is in [MASK]."))
  )
  assert (hf.mask_token_id, hf.pad_token_id, hf.cls_token_id, hf.sep_token_id, hf.unk_token_id) == (4, 0, 2, 3, 1)


@needs_data('the official vocabulary, whose pieces make ALBERT\'s "9," rule fire')
def test_digit_comma_rule_is_approximated_not_restated(fast, ours):
  """Unigram has no step after segmentation; penalised "…9," pieces give the rule's ids where it fires in
  these texts, but avoiding such a piece can change the segmentation around it ("21,0," below)."""
  no_rule = tokenizer_lib.Tokenizer(conftest.SPM_MODEL, split_digit_comma=False)
  assert ours.encode_batch(DIGIT_COMMA_TEXTS) != no_rule.encode_batch(DIGIT_COMMA_TEXTS)  # the rule fires
  assert [e.ids[1:-1] for e in fast.encode_batch(DIGIT_COMMA_TEXTS)] == ours.encode_batch(DIGIT_COMMA_TEXTS)
  pieces = lambda ids: [ours.id_to_piece(i) for i in ids]  # pylint: disable=unnecessary-lambda-assignment
  assert pieces(ours.encode("21,0, 9")) == ["▁21", ",", "0", ",", "▁9"]
  assert pieces(fast.encode("21,0, 9").ids[1:-1]) == ["▁2", "1,0", ",", "▁9"]


@needs_data("the official vocabulary's ids after [MASK]")
def test_text_glued_to_a_special_token_that_normalisation_rewrites(fast, ours):
  """The one other known difference: "first" finds the start of the text by its original offset, so
  characters that normalisation removes or merges at the start of a chunk become a space, which at the start
  of the text gives SentencePiece's "▁" but after a special token starts a word where `Tokenizer` continues
  one."""
  for text in ["``quoted'' first", "\u0301x y", "\x01x y"]:  # at the start of the text: equal
    assert fast.encode(text).ids[1:-1] == ours.encode(text), repr(text)
  assert ours.encode("[MASK]``x''") == [4, 7, 396, 7]
  assert fast.encode("[MASK]``x''").ids[1:-1] == [4, 13, 7, 396, 7]


def test_export_without_tokenizers_package(generated_converted, tmp_path, caplog):
  with pytest.MonkeyPatch.context() as patch:
    patch.setitem(sys.modules, "tokenizers", None)  # `import tokenizers` raises ImportError
    with caplog.at_level(logging.WARNING):
      out = export.export(generated_converted, tmp_path / "exported")
  assert sorted(p.name for p in out.iterdir()) == [
    "config.json",
    "model.safetensors",
    "special_tokens_map.json",
    "spiece.model",
    "tokenizer_config.json",
  ]
  assert any("Skipped tokenizer.json" in r.getMessage() and "tokenizers" in r.getMessage() for r in caplog.records)
  assert json.loads((out / "tokenizer_config.json").read_text())["tokenizer_class"] == "AlbertTokenizer"
  hf = transformers.AutoTokenizer.from_pretrained(out)
  ours = tokenizer_lib.Tokenizer(out / "spiece.model")
  text = "The capital of [MASK] is Delhi."
  assert hf(text)["input_ids"] == [ours.cls_id, *ours.encode(text), ours.sep_id]
