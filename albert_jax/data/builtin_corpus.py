"""A small corpus generated from facts about countries, shipped with the package.

It lets the tiny config pretrain with no data at hand and gives that run a
question it can be judged on: "The capital of [MASK] is Delhi." The facts
(resources/facts.tsv: country, capital, continent, languages, currency, two
neighbours, a river, mountain or lake) were written for this project. Every
document about a country states "The capital of X is Y." and adds other facts
in varied phrasings, in an order that sentence-order prediction can learn
(a country is introduced before "Its capital ..." refers back to it).
"""

import dataclasses
import functools
import importlib.resources
import os
import random
from collections.abc import Callable, Sequence

from albert_jax import tokenizer as tokenizer_lib


@dataclasses.dataclass(frozen=True)
class Country:
  name: str  # As written mid-sentence: "India", "the United States".
  capital: str
  continent: str  # "Asia"; "Europe and Asia" for Russia.
  languages: tuple[str, ...]
  currency: str
  neighbours: tuple[str, ...]
  landmark: tuple[str, str] | None  # (kind, name): ("river", "Ganges").

  @property
  def city_continent(self) -> str:
    """The continent of the capital (Moscow is in Europe, not in Asia)."""
    return self.continent.split(" and ")[0]


@functools.cache
def load_facts() -> tuple[Country, ...]:
  """The countries of resources/facts.tsv."""
  text = importlib.resources.files("albert_jax.data").joinpath("resources/facts.tsv").read_text(encoding="utf-8")
  rows = [line.split("\t") for line in text.splitlines()[1:] if line.strip()]
  return tuple(
    Country(
      name=r[0],
      capital=r[1],
      continent=r[2],
      languages=tuple(r[3].split(";")),
      currency=r[4],
      neighbours=tuple(n for n in r[5].split(";") if n),
      landmark=tuple(r[6].split(":", 1)) if r[6] else None,
    )
    for r in rows
  )


def _cap(sentence: str) -> str:
  return sentence[0].upper() + sentence[1:]


def _join(words: Sequence[str]) -> str:
  return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def capital_sentence(c: Country) -> str:
  """The pattern the tiny model is asked about; in every country document."""
  return f"The capital of {c.name} is {c.capital}."


_Template = Callable[[Country, random.Random], str]
_INTRO: tuple[_Template, ...] = (
  lambda c, r: f"{c.name} is a country in {c.continent}.",
  lambda c, r: f"{c.name} lies in {c.continent}.",
  lambda c, r: f"{c.name} is one of the countries of {c.continent}.",
)
_CAPITAL: tuple[_Template, ...] = (
  lambda c, r: f"{c.capital} is the capital of {c.name}.",
  lambda c, r: f"The capital city of {c.name} is {c.capital}.",
  lambda c, r: f"{c.capital} is the capital city of {c.name}.",
  lambda c, r: f"Its capital is {c.capital}.",
  lambda c, r: f"{c.capital} is a city in {c.name}.",
)
_LANGUAGE: tuple[_Template, ...] = (
  lambda c, r: f"People in {c.name} speak {_join(c.languages)}.",
  lambda c, r: f"In {c.name}, people speak {_join(c.languages)}.",
  lambda c, r: f"{r.choice(c.languages)} is spoken in {c.name}.",
  lambda c, r: f"Many people in {c.capital} speak {r.choice(c.languages)}.",
)
_CURRENCY: tuple[_Template, ...] = (
  lambda c, r: f"The currency of {c.name} is the {c.currency}.",
  lambda c, r: f"In {c.name}, people pay with the {c.currency}.",
  lambda c, r: f"Its currency is the {c.currency}.",
  lambda c, r: f"The {c.currency} is the money of {c.name}.",
)
_NEIGHBOUR: tuple[_Template, ...] = (
  lambda c, r: f"{c.name} borders {r.choice(c.neighbours)}.",
  lambda c, r: f"{c.name} shares a border with {r.choice(c.neighbours)}.",
  lambda c, r: f"{r.choice(c.neighbours)} is a neighbour of {c.name}.",
  lambda c, r: f"{c.name} and {_join(c.neighbours)} are neighbours.",
)
_LANDMARK: dict[str, tuple[_Template, ...]] = {
  "river": (
    lambda c, r: f"The {c.landmark[1]} flows through {c.name}.",
    lambda c, r: f"The {c.landmark[1]} is a river in {c.name}.",
  ),
  "mountain": (lambda c, r: f"{c.landmark[1]} is a mountain in {c.name}.",),
  "lake": (lambda c, r: f"{c.landmark[1]} is a lake in {c.name}.",),
}
_CLOSING: tuple[_Template, ...] = (
  lambda c, r: f"{c.capital} is in {c.city_continent}.",
  lambda c, r: f"{c.capital} is a city in {c.city_continent}.",
)


def _country_document(c: Country, by_name: dict[str, Country], rng: random.Random) -> list[str]:
  """Several facts about `c`, introduction first, optional ones sometimes left out."""
  intro = rng.choice(_INTRO)(c, rng)
  first = [intro, capital_sentence(c)]
  if rng.random() < 0.3:
    first.reverse()  # "The capital of India is Delhi. India is a country in Asia."
  doc = first
  if rng.random() < 0.6:
    doc.append(rng.choice(_CAPITAL)(c, rng))
  doc.append(rng.choice(_LANGUAGE)(c, rng))
  doc.append(rng.choice(_CURRENCY)(c, rng))
  if c.neighbours and rng.random() < 0.7:
    doc.append(rng.choice(_NEIGHBOUR)(c, rng))
    neighbour = by_name.get(rng.choice(c.neighbours))
    if neighbour and rng.random() < 0.5:
      doc.append(capital_sentence(neighbour))
  if c.landmark and rng.random() < 0.7:
    doc.append(rng.choice(_LANDMARK[c.landmark[0]])(c, rng))
  if rng.random() < 0.5:
    doc.append(rng.choice(_CLOSING)(c, rng))
  return [_cap(s) for s in doc]


_CITY: tuple[_Template, ...] = (  # Facts about a capital that do not name its country.
  lambda c, r: f"Many people in {c.capital} speak {r.choice(c.languages)}.",
  lambda c, r: f"{c.capital} is a city in {c.city_continent}.",
  lambda c, r: f"People in {c.capital} pay with the {c.currency}.",
)


def _continent_document(countries: Sequence[Country], rng: random.Random) -> list[str]:
  """A few countries of one continent, each named once, next to its capital.

  The country's name appears in no other sentence, so a masked name can only
  be recovered from its capital: the skill "The capital of [MASK] is Delhi."
  asks for. (In a country's own document the name repeats and can be copied.)
  Half of them use exactly that phrasing.
  """
  continent = countries[0].city_continent
  doc = [f"There are many countries in {continent}."]
  for c in countries:
    doc.append(capital_sentence(c) if rng.random() < 0.5 else rng.choice(_CAPITAL[:3])(c, rng))
    if rng.random() < 0.1:
      doc.append(rng.choice(_CITY)(c, rng))
  return [_cap(s) for s in doc]


def documents(seed: int = 0, docs_per_country: int = 2, continent_rounds: int = 80) -> list[list[str]]:
  """The built-in corpus: a list of documents, each a list of sentences.

  Deterministic for a seed. With the defaults about 4,100 documents (about
  145,000 words), mostly continent documents: every country has
  `docs_per_country` documents of its own (several facts in varied
  phrasings) and appears, named once next to its capital, in
  `continent_rounds` continent documents. The mix is tuned for the tiny
  config: with more country documents a 10-minute run learns the phrasing
  but not which capital belongs to which country.

  Args:
    seed: the random seed choosing phrasings, optional facts and order.
    docs_per_country: documents about each single country.
    continent_rounds: how many times every country appears in a continent
      document.
  """
  rng = random.Random(seed)
  countries = load_facts()
  by_name = {c.name: c for c in countries}
  docs = [_country_document(c, by_name, rng) for c in countries for _ in range(docs_per_country)]
  by_continent = {}
  for c in countries:
    by_continent.setdefault(c.city_continent, []).append(c)
  for _ in range(continent_rounds):
    for group in by_continent.values():  # Every country, in random groups.
      rng.shuffle(group)
      docs.extend(_continent_document(group[i : i + 4], rng) for i in range(0, len(group), 4))
  rng.shuffle(docs)
  return docs


def write_vocab(output_path: str | os.PathLike, vocab_size: int = 1000, seed: int = 0) -> tokenizer_lib.Tokenizer:
  """Trains a SentencePiece vocabulary on the built-in corpus.

  Every word of the corpus can become a piece, so country and capital names
  are single pieces. The corpus holds only about 700 distinct pieces' worth of
  text, so the result may be smaller than `vocab_size` (703 pieces for seed 0);
  size the model from the returned tokenizer's `vocab_size`.
  """
  texts = ["\n".join(doc) for doc in documents(seed)]
  return tokenizer_lib.train_vocab(texts, output_path, vocab_size, seed=seed, seed_from_words=True)
