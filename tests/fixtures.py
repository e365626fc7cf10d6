"""Small inputs that tests make for themselves: a vocabulary, GLUE TSVs, SQuAD JSON, a text corpus, bad input.

Tests whose subject is the code (readers, features, round trips, error messages, pipeline statistics) run on
these everywhere; the shared data (tests/conftest.py `shared_data`) is for tests whose subject is the real data
or the official vocabulary. Everything here is deterministic (fixed seeds) and small; tests/conftest.py
writes each once per session.

The text is made of sentences "Subject verb object." with accents, digits, quotes and dashes in some of them,
so that normalisation, word pieces and `<unk>` all occur; the vocabulary is trained on that text and on the
built-in corpus.
"""

import contextlib
import json
import os
import pathlib
import random
import subprocess

import pytest

SUBJECTS = [
  "the film",
  "this movie",
  "a critic",
  "the old house",
  "Ann",
  "Tom",
  "the café owner",
  "an engineer",
  "the director's cut",
  "our 3 friends",
  "Mr. Darcy",
  "the small village",
  "every student",
  "the band",
  "Łukasz",
  "the naïve hero",
  "a Japanese chef",
  "the committee",
  "her brother",
  "the storm",
]
VERBS = [
  "loved",
  "hated",
  "watched",
  "described",
  "remembered",
  "painted",
  "sold",
  "built",
  "visited",
  "praised",
  "ignored",
  "carried",
  "found",
  "wrote about",
  "dreamed of",
  "feared",
]
OBJECTS = [
  "a red bike",
  "the long article",
  "naïve jokes",
  "the 1,000-page novel",
  "``quoted'' lines",
  "two cats",
  "the river bank",
  "Paris in 1984",
  "its 92 songs",
  "the 2½ metre wall",
  "an Ünïcödé sign",
  "the mountain road",
  "seven blue doors",
  "a quiet garden",
  "the museum in İstanbul",
  "old photographs",
  "the winter of 1879",
  "a €5 ticket",
  "the king's letter",
  "three green apples",
  "the ship—and its crew",
  "a Delhi market",
  "the final chapter",
  "cold coffee",
]
# A pretraining model small enough to build and compile many times in one test run: 3 layers of 32.
SMALL_MODEL = dict(
  vocab_size=128,
  embedding_size=16,
  hidden_size=32,
  num_hidden_layers=3,
  num_attention_heads=4,
  intermediate_size=64,
  max_position_embeddings=32,
)

ENDINGS = [".", ".", ".", " .", "!", "?", ", and it rained.", " (twice).", " -- or so they say.", "; the end."]


def sentence(rng: random.Random) -> str:
  text = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}{rng.choice(ENDINGS)}"
  return text[0].upper() + text[1:]


def sentences(count: int, seed: int = 0) -> list[str]:
  rng = random.Random(seed)
  return [sentence(rng) for _ in range(count)]


def documents(count: int, seed: int = 0, min_sentences: int = 2, max_sentences: int = 30) -> list[list[str]]:
  """`count` distinct documents of `min_sentences` to `max_sentences` sentences."""
  rng = random.Random(seed)
  docs, seen = [], set()
  while len(docs) < count:
    doc = [sentence(rng) for _ in range(rng.randint(min_sentences, max_sentences))]
    if tuple(doc) not in seen:
      seen.add(tuple(doc))
      docs.append(doc)
  return docs


def write_lines_corpus(path: pathlib.Path, docs: list[list[str]]) -> pathlib.Path:
  """The BERT/ALBERT pretraining-data format: a sentence a line, a blank line between documents."""
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("\n\n".join("\n".join(doc) for doc in docs) + "\n", encoding="utf-8")
  return path


# What `write_bad_corpus_files` plants, as a prepared dataset's metadata counts it (summed over the splits).
BAD_INPUT_COUNTS = {"unreadable_files": 1, "bad_lines": 1, "empty_documents": 1, "empty_sentences": 2}


def write_bad_corpus_files(folder: pathlib.Path) -> list[pathlib.Path]:
  """Three files a corpus glob may catch: one that cannot be read as text (a gzip file), one with a line that is
  not UTF-8 among good ones, and one with a document whose two sentences tokenise to nothing (combining accents
  only) beside a good one."""
  folder.mkdir(parents=True, exist_ok=True)
  unreadable = folder / "shard-unreadable.txt.gz"
  unreadable.write_bytes(b"\x1f\x8b\x08\x00" + bytes(range(256)) * 8)
  bad_line = folder / "shard-bad-line.txt"
  good = documents(4, seed=11)
  text = write_lines_corpus(bad_line, good).read_bytes()
  bad_line.write_bytes(text.replace(b"\n", b"\nA line that is not \xff\xfe UTF-8.\n", 1))
  empty = folder / "shard-empty-document.txt"
  empty.write_text("\u0301\u0301\n\u0302\n\n" + "\n".join(documents(1, seed=12)[0]) + "\n", encoding="utf-8")
  return [unreadable, bad_line, empty]


@contextlib.contextmanager
def read_only_folder(path: pathlib.Path):
  """A folder no file can be written into: a read-only tmpfs (for root, who ignores permissions), else chmod."""
  path.mkdir()
  if os.geteuid() != 0:
    path.chmod(0o555)
    yield path
    path.chmod(0o755)
    return
  if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(path)], capture_output=True).returncode:
    pytest.skip("a read-only folder needs `mount` (root with CAP_SYS_ADMIN) or a user other than root")
  try:
    yield path
  finally:
    subprocess.run(["umount", "-l", str(path)], check=True)


def write_vocab(path: pathlib.Path, vocab_size: int = 500):
  """An ALBERT-style SentencePiece model ([CLS], [SEP], [MASK], ALBERT's punctuation pieces), in about a second.

  Trained on the built-in corpus and generated sentences. At 500 pieces the common words are whole pieces and
  the rarer ones are split (mostly into letters), so whole-word masking has continuations to keep together.
  """
  from albert_jax import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  from albert_jax.data import builtin_corpus  # pylint: disable=g-import-not-at-top

  texts = ["\n".join(doc) for doc in builtin_corpus.documents()] + sentences(3000, seed=1)
  return tokenizer_lib.train_vocab(texts, path, vocab_size, seed_from_words=True)


# ---------------------------------------------------------------------------
# GLUE: the original layouts of SST-2, CoLA, MRPC and STS-B.

GLUE_ROWS = {"train": 80, "dev": 40}


def _glue_rows(rng, split):
  return [(sentence(rng), sentence(rng), rng.random()) for _ in range(GLUE_ROWS[split])]


def write_glue(root: pathlib.Path, seed: int = 0) -> pathlib.Path:
  """SST-2, CoLA, MRPC and STS-B train.tsv and dev.tsv in their original layouts (MRPC's BOM included).

  Labels: 1 and 0 in the first two rows, then at random (STS-B: 5.000, 0.000, then scores in [0, 5]).
  """
  rng = random.Random(seed)
  for split in GLUE_ROWS:
    files = {
      "SST-2": ["sentence\tlabel"],
      "CoLA": [],
      "STS-B": ["index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"],
      "MRPC": ["\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String"],
    }
    for i, (a, b, u) in enumerate(_glue_rows(rng, split)):
      label = 1 - i if i < 2 else int(u < 0.5)  # 1, 0, then at random
      files["SST-2"].append(f"{a.lower()} \t{label}")
      files["CoLA"].append(f"src{i % 7}\t{label}\t{'' if label else '*'}\t{a}")
      files["MRPC"].append(f"{label}\t{1000 + i}\t{2000 + i}\t{a}\t{b}")
      score = 5.0 * (1 - i) if i < 2 else 5.0 * u  # 5, 0, then at random
      files["STS-B"].append(f"{i}\tmain-news\tnews\t2016\t{i}\tnone\tnone\t{a}\t{b}\t{score:.3f}")
    for folder, lines in files.items():
      (root / folder).mkdir(parents=True, exist_ok=True)
      (root / folder / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
  return root


# ---------------------------------------------------------------------------
# SQuAD: v1.1 and v2.0 JSON in the official format.


def _qa(qid, question, answer, start, alternatives=()):
  answers = [{"text": answer, "answer_start": start}]
  for text in alternatives:
    answers.append({"text": text, "answer_start": start + answer.index(text)})
  return {"id": qid, "question": question, "answers": answers}


def squad_dataset(version: str, articles: int, seed: int = 0) -> dict:
  """`articles` articles of two paragraphs, each with three answerable questions (v2.0: and two unanswerable).

  An answerable question asks for the object of one of the paragraph's sentences ("What did Ann paint?") with
  up to three gold answers (the object, without its article, and again); an unanswerable one asks about a
  subject the paragraph does not name, with a plausible answer.
  """
  rng = random.Random(seed)
  data = []
  for a in range(articles):
    paragraphs = []
    for p in range(2):
      subjects = rng.sample(SUBJECTS, 6)
      parts = [(s, rng.choice(VERBS), rng.choice(OBJECTS), rng.choice(ENDINGS)) for s in subjects[:5]]
      context, starts = "", []
      for s, v, o, end in parts:
        text = f"{s} {v} "
        text = text[0].upper() + text[1:]
        starts.append(len(context) + len(text))
        context += f"{text}{o}{end} "
      context = context.rstrip()
      qas = []
      for q, k in enumerate(rng.sample(range(5), 3)):
        s, v, o, _ = parts[k]
        words = o.split(" ", 1)
        alternatives = [words[1]] if words[0] in ("a", "an", "the") and len(words) > 1 else []
        if q == 1:
          alternatives.append(o)
        qas.append(_qa(f"q{a}-{p}-{q}", f"What did {s} {v.split()[0]}?", o, starts[k], alternatives))
      if version == "2.0":
        for q in range(2):
          s, v, o, _ = parts[q]
          qas.append(
            {
              "id": f"q{a}-{p}-none{q}",
              "question": f"What did {subjects[5]} {v.split()[0]}?",
              "answers": [],
              "is_impossible": True,
              "plausible_answers": [{"text": o, "answer_start": starts[q]}],
            }
          )
        for qa in qas:
          qa.setdefault("is_impossible", False)
      paragraphs.append({"context": context, "qas": qas})
    data.append({"title": f"Article {a}", "paragraphs": paragraphs})
  return {"version": version, "data": data}


def write_squad(root: pathlib.Path, seed: int = 0) -> pathlib.Path:
  """train-v1.1.json, dev-v1.1.json (6 articles, 36 questions each), train-v2.0.json, dev-v2.0.json (3 articles,
  30 questions, 12 unanswerable)."""
  root.mkdir(parents=True, exist_ok=True)
  for version, articles in (("1.1", 6), ("2.0", 3)):
    for offset, split in enumerate(("train", "dev")):
      dataset = squad_dataset(version, articles, seed=seed + 2 * offset + (version == "2.0"))
      (root / f"{split}-v{version}.json").write_text(json.dumps(dataset), encoding="utf-8")
  return root


# ---------------------------------------------------------------------------
# Tiny fine-tuning runs.


@contextlib.contextmanager
def compilation_cache(directory):
  """Runs with the same shapes and settings compile once: XLA compilation dominates tiny fine-tuning runs."""
  import jax  # pylint: disable=g-import-not-at-top

  options = {
    "jax_compilation_cache_dir": str(directory),
    "jax_persistent_cache_min_compile_time_secs": 0.0,
    "jax_persistent_cache_min_entry_size_bytes": 0,
  }
  previous = {k: getattr(jax.config, k) for k in options}
  for k, v in options.items():
    jax.config.update(k, v)
  try:
    yield
  finally:
    for k, v in previous.items():
      jax.config.update(k, v)
