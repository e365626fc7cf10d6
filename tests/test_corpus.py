"""Corpus readers on the real files (shared data) and on generated ones, the sentence splitter, and the built-in
corpus."""

import collections
import logging
import re

import pytest

from albert_jax.data import builtin_corpus, corpus
from tests import fixtures
from tests.conftest import needs_data


def _read(path, **kwargs):
  stats = corpus.ReadStats()
  return list(corpus.read_documents(path, stats=stats, **kwargs)), stats


@needs_data('text/bert_sample_text.txt, the BERT sample in the "lines" format')
def test_lines_format_bert_sample(shared_data):
  path = shared_data / "text" / "bert_sample_text.txt"
  raw = path.read_text("utf-8")
  blocks = [b for b in re.split(r"\n\s*\n", raw) if b.strip()]
  docs, stats = _read(path)
  assert corpus.detect_format(raw) == "lines"
  assert len(docs) == len(blocks) == 3
  assert [len(d) for d in docs] == [len(b.strip().splitlines()) for b in blocks]
  assert docs[0][0].endswith("力加勝北区ᴵᴺᵀᵃছজটডণত")
  assert stats.documents == 3 and stats.sentences == 31 and stats.bad_lines == 0


@needs_data("text/wikitext-2-raw/wiki.valid.raw, its 60 articles")
def test_wikitext_valid_has_60_articles(shared_data):
  path = shared_data / "text" / "wikitext-2-raw" / "wiki.valid.raw"
  lines = path.read_text("utf-8").splitlines()
  titles = [line for line in lines if line.startswith(" = ") and not line.startswith(" = = ")]
  docs, _ = _read(path)
  assert len(titles) == len(docs) == 60
  assert docs[0][:2] == [
    "Homarus gammarus , known as the European lobster or common lobster , is a "
    "species of clawed lobster from the eastern Atlantic Ocean , Mediterranean "
    "Sea and parts of the Black Sea .",
    "It is closely related to the American lobster , H. americanus .",
  ]
  sentences = [s for d in docs for s in d]
  assert not any(s.startswith("=") or " @-@ " in s or " @,@ " in s for s in sentences)
  assert 6000 < len(sentences) < 10000  # About 2 sentences per 100 words of 200k.


@needs_data("text/hf_fixture_wiki_00.txt, two WikiExtractor documents")
def test_wikiextractor(shared_data):
  path = shared_data / "text" / "hf_fixture_wiki_00.txt"
  raw = path.read_text("utf-8")
  docs, _ = _read(path)
  assert len(docs) == raw.count("<doc ") == 2
  assert docs[0][0].startswith("Anarchism is a political philosophy")
  assert docs[1][0].startswith("Autism is a developmental disorder")
  assert not any("<doc" in s or "</doc>" in s for d in docs for s in d)


@needs_data("the four Gutenberg books, split into chapters")
@pytest.mark.parametrize(
  "name,chapters",
  [
    ("pg11_alice_in_wonderland.txt", 12),
    ("pg120_treasure_island.txt", 34),
    ("pg35_the_time_machine.txt", 16),
    ("pg1342_pride_and_prejudice.txt", 61),
  ],
)
def test_gutenberg_books(shared_data, name, chapters):
  path = shared_data / "text" / "gutenberg" / name
  docs, stats = _read(path)
  sentences = [s for d in docs for s in d]
  assert corpus.detect_format(path.read_text("utf-8-sig")) == "prose"
  # Chapters become documents (plus front matter and epilogues).
  assert chapters <= len(docs) <= chapters + 2
  assert not any("gutenberg" in s.lower() or "\ufeff" in s or "\r" in s for s in sentences)
  assert not any(s.startswith("[Illustration") for s in sentences)
  assert stats.bad_lines == 0


@needs_data("the Gutenberg Alice's first and last sentences")
def test_alice_first_sentences(shared_data):
  docs, _ = _read(shared_data / "text" / "gutenberg" / "pg11_alice_in_wonderland.txt")
  assert docs[0][0].startswith("Alice was beginning to get very tired")
  assert docs[0][0].endswith("‘without pictures or conversations?’")
  assert docs[-1][-1].endswith("and the happy summer days.")


@needs_data("text/botchan.txt and text/tinyshakespeare.txt")
def test_other_prose_files(shared_data):
  for name in ("botchan.txt", "tinyshakespeare.txt"):
    docs, stats = _read(shared_data / "text" / name)
    assert docs and stats.sentences > 2000


@pytest.mark.parametrize(
  "text,expected",
  [
    ("Mr. Darcy came. He sat down.", ["Mr. Darcy came.", "He sat down."]),
    (
      "Mrs. Bennet and Dr. Watson met St. John at 5 p.m. on Monday.",
      ["Mrs. Bennet and Dr. Watson met St. John at 5 p.m. on Monday."],
    ),
    ('"Stop!" he cried. "Why?" She asked.', ['"Stop!" he cried.', '"Why?"', "She asked."]),
    ("It was late... Then it rained.", ["It was late...", "Then it rained."]),
    ("Wait… what was that? Nothing.", ["Wait… what was that?", "Nothing."]),
    ("By H. G. Wells, e.g. here, i.e. there. Done.", ["By H. G. Wells, e.g. here, i.e. there.", "Done."]),
    ("It grew in the U.S. and the U.K. fast.", ["It grew in the U.S. and the U.K. fast."]),
    (
      "‘Oh dear!’ (she thought.) ‘I shall be late!’ It ran.",
      ["‘Oh dear!’ (she thought.)", "‘I shall be late!’", "It ran."],
    ),
    ("It cost 3.5 dollars. 1984 was a year.", ["It cost 3.5 dollars.", "1984 was a year."]),
    ("No end here", ["No end here"]),
    ("  spaced   out.\n\nNext  line. ", ["spaced out.", "Next line."]),
    ("", []),
  ],
)
def test_split_sentences(text, expected):
  assert corpus.split_sentences(text) == expected


def test_format_override_and_unknown(tmp_path):
  path = fixtures.write_lines_corpus(tmp_path / "sample.txt", fixtures.documents(3, max_sentences=12))
  assert corpus.detect_format(path.read_text("utf-8")) == "lines" and len(_read(path)[0]) == 3
  docs, _ = _read(path, format="prose")
  assert len(docs) == 1  # One chapterless "book".
  with pytest.raises(ValueError, match="Unknown corpus format"):
    corpus.read_documents(path, format="csv")


# One small file per format with the quirks of the real ones (the shared files are read above).
_SMALL_FILES = {
  "lines": (
    b"First sentence.\nSecond one.\n\n\nA new document.\n",
    [["First sentence.", "Second one."], ["A new document."]],
  ),
  "wikiextractor": (
    b'<doc id="1" url="u" title="Alpha">\nAlpha\nAlpha is a letter. It comes first.\n'
    b'</doc>\n<doc id="2" url="v" title="Beta">\nBeta\n\nBeta follows it.\n</doc>\n',
    [["Alpha is a letter.", "It comes first."], ["Beta follows it."]],
  ),
  "wikitext": (
    b" = Alpha = \n \n Alpha is a letter @-@ like sign . It has 1 @,@ 000 uses in 3 @.@ 5 "
    b"places . \n \n = = History = = \n \n It came first . \n \n = Beta = \n \n Beta follows . \n",
    [["Alpha is a letter-like sign .", "It has 1,000 uses in 3.5 places .", "It came first ."], ["Beta follows ."]],
  ),
  "prose": (
    (
      "\ufeffThe Project Gutenberg eBook of Alpha\r\n\r\n*** START OF THE PROJECT GUTENBERG EBOOK "
      "ALPHA ***\r\n\r\nALPHA\r\n\r\nby A. Writer\r\n\r\nCHAPTER I. The Start\r\n\r\nMr. Darcy came. He sat"
      "\r\ndown.\r\n\r\n[Illustration: a chair\r\nwith legs]\r\n\r\n‘Oh dear!’ she said.\r\n\r\n"
      "CHAPTER II.\r\n\r\nIt ended.\r\n\r\n*** END OF THE PROJECT GUTENBERG EBOOK ALPHA ***\r\n\r\n"
      "License. More text.\r\n"
    ).encode(),
    [["Mr. Darcy came.", "He sat down.", "‘Oh dear!’ she said."], ["It ended."]],
  ),
}


@pytest.mark.parametrize("name", sorted(_SMALL_FILES))
def test_every_format_on_a_small_file(tmp_path, name):
  content, expected = _SMALL_FILES[name]
  path = tmp_path / f"{name}.txt"
  path.write_bytes(content)
  assert corpus.detect_format(content.decode("utf-8-sig")) == name
  docs, stats = _read(path)
  assert docs == expected
  assert (stats.documents, stats.sentences, stats.bad_lines) == (len(expected), sum(map(len, expected)), 0)
  assert _read(path, format=name)[0] == expected


def test_missing_directory_and_empty_files(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    corpus.read_documents(tmp_path / "none.txt")
  with pytest.raises(IsADirectoryError, match="not a file"):
    corpus.read_documents(tmp_path)
  empty = tmp_path / "empty.txt"
  empty.write_text("")
  with pytest.raises(ValueError, match="empty"):
    corpus.read_documents(empty)
  blank = tmp_path / "blank.txt"
  blank.write_text("\n  \n\t\n")
  with pytest.raises(ValueError, match="empty"):
    corpus.read_documents(blank)


def test_bad_utf8_lines_are_skipped_and_counted(tmp_path, caplog):
  path = tmp_path / "mixed.txt"
  path.write_bytes(b"First sentence.\nBad \xff\xfe line.\nSecond sentence.\n\nOther doc.\n\xc3\x28 broken.\n")
  with caplog.at_level(logging.WARNING):
    docs, stats = _read(path)
  assert docs == [["First sentence.", "Second sentence."], ["Other doc."]]
  assert (stats.bad_lines, stats.first_bad_line, stats.lines) == (2, 2, 6)
  assert "skipped 2 of 6 lines that are not UTF-8 (first: line 2)" in caplog.text
  with pytest.raises(ValueError, match=r"mixed.txt:2: not UTF-8"):
    list(corpus.read_documents(path, on_error="raise"))


def test_binary_file_is_refused(tmp_path):
  path = tmp_path / "data.bin"
  path.write_bytes(bytes(range(128, 256)) * 50 + b"\n" + b"\xff\n" * 20)
  with pytest.raises(ValueError, match="does not look like UTF-8"):
    corpus.read_documents(path)


def test_file_without_documents(tmp_path):
  path = tmp_path / "wiki.txt"
  path.write_text('<doc id="1" title="T">\nT\n</doc>\n')
  with pytest.raises(ValueError, match="holds no documents"):
    list(corpus.read_documents(path))


def test_builtin_corpus_is_deterministic():
  assert builtin_corpus.documents(seed=0) == builtin_corpus.documents(seed=0)
  assert builtin_corpus.documents(seed=0) != builtin_corpus.documents(seed=1)


def test_builtin_corpus_size_and_coverage():
  countries = builtin_corpus.load_facts()
  docs = builtin_corpus.documents()
  assert len(countries) >= 150 and len({c.name for c in countries}) == len(countries)
  assert len(docs) >= 4000 and all(2 <= len(d) <= 12 for d in docs)
  counts = collections.Counter(s for d in docs for s in d)
  for c in countries:
    assert counts[builtin_corpus.capital_sentence(c)] >= 24, c.name
  assert counts["The capital of India is Delhi."] >= 24
  assert all(s[0].isupper() and s[-1] == "." for d in docs for s in d)


def test_facts_table():
  by_name = {c.name: c for c in builtin_corpus.load_facts()}
  assert by_name["India"].capital == "Delhi"
  assert by_name["France"].capital == "Paris" and by_name["France"].currency == "euro"
  assert by_name["Japan"].landmark == ("mountain", "Mount Fuji")
  continents = {c.continent for c in by_name.values()}
  assert continents == {"Africa", "Asia", "Europe", "North America", "South America", "Oceania", "Europe and Asia"}
  for c in by_name.values():
    assert c.capital and c.languages and c.currency
    assert all(n in by_name for n in c.neighbours), c.name


def test_builtin_vocab_keeps_names_whole(tmp_path):
  tok = builtin_corpus.write_vocab(tmp_path / "spiece.model")
  assert [tok.id_to_piece(i) for i in range(5)] == ["<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"]
  assert [tok.id_to_piece(i) for i in tok.encode("The capital of [MASK] is Delhi.")] == [
    "▁the",
    "▁capital",
    "▁of",
    "[MASK]",
    "▁is",
    "▁delhi",
    ".",
  ]
  names = [w for c in builtin_corpus.load_facts() for w in (c.name, c.capital) if re.fullmatch(r"[A-Za-z]+", w)]
  assert all(len(tok.encode(w)) == 1 for w in names)
  assert 500 < tok.vocab_size <= 1000
