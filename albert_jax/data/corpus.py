"""Readers turning text files (local, or in a bucket: `gs://`) into documents (lists of sentences).

Sentence-order prediction needs consecutive sentences of one document, so every
format is read as `Iterator[list[str]]`: one list of sentences per document.

Formats (detected from the file's start unless `format=` says):
  lines          one sentence a line, a blank line between documents (the input
                 of BERT's and ALBERT's create_pretraining_data.py).
  wikiextractor  `<doc id=.. title=..>` ... `</doc>` blocks; paragraphs a line.
  wikitext       raw WikiText: ` = Title = ` starts an article, ` = = Section
                 = = ` headings are dropped, paragraphs a line.
  prose          books and other running text (Project Gutenberg included):
                 paragraphs separated by blank lines, split into sentences by
                 `split_sentences`; chapters become documents.

Lines that are not UTF-8 are skipped and counted (`ReadStats`, and a logged
warning naming the file and first bad line), or raise with `on_error='raise'`.
"""

import dataclasses
import io
import itertools
import logging
import os
import re
from collections.abc import Iterable, Iterator

from albert_jax import storage

FORMATS = ("lines", "wikiextractor", "wikitext", "prose")

# Words whose trailing period does not end a sentence (compared lowercased).
_ABBREVIATIONS = frozenset(
  """
    mr mrs ms messrs dr prof st jr sr rev hon gen col capt lt sgt maj cmdr adm
    gov sen rep pres supt esq mt ft no nos vs viz cf al approx dept est fig figs
    vol vols ch chap sec p pp ed eds inc ltd co corp bros jan feb apr jun jul
    aug sep sept oct nov dec e.g i.e a.m p.m u.s u.k
""".split()
)
_CLOSERS = "\"'”’)]}»_*"
_OPENERS = "\"'“‘([{«_*"
# A candidate sentence end: terminal punctuation, closing quotes, whitespace.
_CANDIDATE_END = re.compile(r"(?:[.!?]+|…)[" + re.escape(_CLOSERS) + r"]*\s+")
_WIKITEXT_TITLE = re.compile(r"^ = (?!=)(.*) = $")
_WIKITEXT_HEADING = re.compile(r"^ (= )+.*( =)+ $")
_WIKITEXT_MARKERS = ((" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", "."))
_GUTENBERG_START = re.compile(r"^\s*\*\*\* ?START OF (THE|THIS) PROJECT GUTENBERG")
_GUTENBERG_END = re.compile(r"^\s*(\*\*\* ?END OF (THE|THIS) |END OF (THE )?)PROJECT GUTENBERG", re.I)
# A paragraph that starts a chapter ("CHAPTER I. Down the Rabbit-Hole", "IV").
_CHAPTER = re.compile(r"^((chapter|book|part|volume|stave|letter)\b|([ivxlc]+|\d+)\.?$)", re.I)
_SAMPLE_BYTES = 1 << 16
_GUTENBERG_HEADER_LINES = 1000  # The START marker is searched for here.


@dataclasses.dataclass
class ReadStats:
  """What a reader saw and dropped; pass one to `read_documents` to get it."""

  lines: int = 0
  bad_lines: int = 0  # Not UTF-8; skipped.
  first_bad_line: int | None = None
  documents: int = 0
  sentences: int = 0


def split_sentences(text: str) -> list[str]:
  """Splits running text into sentences by rule, with no model to download.

  A sentence ends at . ! ? … (and closing quotes or brackets after it) when
  the next word starts with a capital letter or digit, except after known
  abbreviations (Mr., Dr., e.g. ...) and single-letter initials (H. G. Wells).
  """
  text = " ".join(text.split())
  sentences, start = [], 0
  for m in _CANDIDATE_END.finditer(text):
    rest = text[m.end() :].lstrip(_OPENERS)
    if not rest or not (rest[0].isupper() or rest[0].isdigit()):
      continue
    if text[m.start()] == "." and text[m.start() : m.start() + 2] != "..":
      word = text[start : m.start()].rsplit(" ", 1)[-1].lstrip(_OPENERS).lower()
      if len(word) == 1 and word.isalpha() or word in _ABBREVIATIONS:
        continue
    sentences.append(text[start : m.end()].strip())
    start = m.end()
  if text[start:].strip():
    sentences.append(text[start:].strip())
  return sentences


def read_documents(
  path: str | os.PathLike,
  format: str | None = None,  # pylint: disable=redefined-builtin
  *,
  on_error: str = "skip",
  stats: ReadStats | None = None,
) -> Iterator[list[str]]:
  """Documents of the file at `path`, each a list of sentences.

  The file is checked (exists, readable, not empty, looks like UTF-8 text) and
  its format detected when this is called; documents are read lazily.

  Args:
    path: a text file.
    format: one of FORMATS; None detects it.
    on_error: 'skip' lines that are not UTF-8 (counted in `stats`, logged),
      or 'raise' a ValueError naming the file and line.
    stats: filled in while reading, if given.

  Returns:
    An iterator over documents; documents without sentences are left out.
  """
  path = os.fspath(path)
  if on_error not in ("skip", "raise"):
    raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
  if format is not None and format not in FORMATS:
    raise ValueError(f"Unknown corpus format {format!r}; use one of {FORMATS}.")
  sample = _read_sample(path)
  format = format or detect_format(sample)
  stats = stats if stats is not None else ReadStats()
  reader = _READERS[format]
  return _counted(path, reader(_lines(path, on_error, stats)), stats)


def sentences(
  paths: Iterable[str | os.PathLike],
  format: str | None = None,  # pylint: disable=redefined-builtin
) -> Iterator[str]:
  """Every sentence of every file, in order (what a vocabulary is trained on)."""
  for path in paths:
    for document in read_documents(path, format):
      yield from document


def detect_format(sample: str) -> str:
  """The format of a file whose first lines are `sample` (see FORMATS)."""
  lines = sample.splitlines()
  if sample.lstrip().startswith("<doc "):
    return "wikiextractor"
  if any(_WIKITEXT_TITLE.match(line) for line in lines[:100]):
    return "wikitext"
  if "project gutenberg" in sample[:4000].lower():
    return "prose"
  # One-sentence-per-line files end almost every line with a sentence end;
  # prose wraps lines mid-sentence.
  text_lines = [line.rstrip() for line in lines[:-1] if line.strip()]
  ends = sum(line[-1] in ".!?…" + _CLOSERS for line in text_lines)
  return "lines" if ends >= 0.7 * len(text_lines) else "prose"


def _read_sample(path: str) -> str:
  file = storage.path(path)
  if not file.exists():
    raise FileNotFoundError(f"Corpus file {path!r} does not exist.")
  if not file.is_file():
    raise IsADirectoryError(f"Corpus path {path!r} is not a file; pass each file.")
  try:
    with file.open("rb") as f:
      raw = f.read(_SAMPLE_BYTES)
  except OSError as e:
    raise OSError(f"Cannot read corpus file {path!r}: {e}") from None
  text = raw.decode("utf-8", errors="replace").lstrip("\ufeff")
  if not text.strip():
    raise ValueError(f"Corpus file {path!r} is empty: it holds no text.")
  lines = raw.split(b"\n")[:-1] or [raw]
  bad = sum(_decodes(line) is None for line in lines)
  if bad > len(lines) / 2:
    raise ValueError(
      f"Corpus file {path!r} does not look like UTF-8 text "
      f"({bad} of its first {len(lines)} lines are not UTF-8); "
      "convert it with e.g. `iconv -t utf-8`."
    )
  return text


def _decodes(raw: bytes) -> str | None:
  try:
    return raw.decode("utf-8")
  except UnicodeDecodeError:
    return None


def _lines(path: str, on_error: str, stats: ReadStats) -> Iterator[str]:
  """Decoded lines without line endings or BOM; bad ones skipped or raised."""
  with storage.path(path).open("rb") as f:
    # A bucket's file object reads line by line 50x slower than through a buffer of its own.
    for number, raw in enumerate(io.BufferedReader(f, 1 << 20) if storage.is_remote(path) else f, 1):
      stats.lines += 1
      try:
        line = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        if on_error == "raise":
          raise ValueError(
            f"{path}:{number}: not UTF-8 ({e.reason} at byte {e.start}); fix the line or read with on_error='skip'."
          ) from None
        stats.bad_lines += 1
        stats.first_bad_line = stats.first_bad_line or number
        continue
      if number == 1:
        line = line.lstrip("\ufeff")
      yield line.rstrip("\r\n")


def _counted(path: str, documents: Iterator[list[str]], stats: ReadStats) -> Iterator[list[str]]:
  for doc in documents:
    if doc:
      stats.documents += 1
      stats.sentences += len(doc)
      yield doc
  if stats.bad_lines:
    logging.warning(
      "%s: skipped %d of %d lines that are not UTF-8 (first: line %d).",
      path,
      stats.bad_lines,
      stats.lines,
      stats.first_bad_line,
    )
  if not stats.documents:
    raise ValueError(
      f"Corpus file {path!r} holds no documents; is its format right? Choose one of {FORMATS} with format=."
    )


def _read_lines_format(lines: Iterator[str]) -> Iterator[list[str]]:
  doc = []
  for line in lines:
    line = line.strip()
    if line:
      doc.append(line)
    elif doc:
      yield doc
      doc = []
  yield doc


def _read_wikiextractor(lines: Iterator[str]) -> Iterator[list[str]]:
  doc, title = [], None
  for line in lines:
    stripped = line.strip()
    if stripped.startswith("<doc ") and stripped.endswith(">"):
      m = re.search(r'title="([^"]*)"', stripped)
      doc, title = [], m.group(1) if m else None
    elif stripped == "</doc>":
      yield doc
      doc, title = [], None
    elif stripped and not (not doc and stripped == title):
      doc.extend(split_sentences(stripped))
  yield doc


def _read_wikitext(lines: Iterator[str]) -> Iterator[list[str]]:
  doc = []
  for line in lines:
    if _WIKITEXT_TITLE.match(line):
      yield doc
      doc = []
    elif line.strip() and not _WIKITEXT_HEADING.match(line):
      for marker, char in _WIKITEXT_MARKERS:
        line = line.replace(marker, char)
      doc.extend(split_sentences(line))
  yield doc


def _paragraphs(lines: Iterator[str]) -> Iterator[str]:
  """Blank-line separated paragraphs, Project Gutenberg header/footer cut."""
  head = list(itertools.islice(lines, _GUTENBERG_HEADER_LINES))
  start = next((i + 1 for i, line in enumerate(head) if _GUTENBERG_START.match(line)), 0)
  paragraph = []
  for line in itertools.chain(head[start:], lines):
    if _GUTENBERG_END.match(line):
      break
    if line.startswith("Produced by"):
      continue  # The digitisers' credit line.
    if line.strip():
      paragraph.append(line.strip())
    elif paragraph:
      yield " ".join(paragraph)
      paragraph = []
  if paragraph:
    yield " ".join(paragraph)


def _read_prose(lines: Iterator[str]) -> Iterator[list[str]]:
  doc, in_illustration = [], False
  for paragraph in _paragraphs(lines):
    if in_illustration or paragraph.startswith("[Illustration"):
      in_illustration = "]" not in paragraph
    elif _CHAPTER.match(paragraph) and len(paragraph.split()) <= 12:
      yield doc
      doc = []
    elif not _is_front_matter(paragraph):
      doc.extend(split_sentences(paragraph))
  yield doc


def _is_front_matter(paragraph: str) -> bool:
  """Titles and bylines: short lines with no sentence end, or all capitals."""
  return (
    not any(c.islower() for c in paragraph) or len(paragraph.split()) <= 10 and paragraph[-1] not in ".!?…" + _CLOSERS
  )


_READERS = {
  "lines": _read_lines_format,
  "wikiextractor": _read_wikiextractor,
  "wikitext": _read_wikitext,
  "prose": _read_prose,
}
