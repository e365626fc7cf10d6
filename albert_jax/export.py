"""`python -m albert_jax.export --checkpoint=SRC --output=DIR`: any checkpoint → a Hugging Face ALBERT directory.

DIR gets config.json, model.safetensors, spiece.model, tokenizer.json and the tokenizer config, which
`transformers.AlbertForMaskedLM.from_pretrained(DIR)` and `AutoTokenizer.from_pretrained(DIR)` load
(`albert_jax.checkpoints.export`). A fine-tuned model is written as its head's class, with its label names
(AutoModelForSequenceClassification, …QuestionAnswering, …MultipleChoice, …TokenClassification load it).
"""

from absl import flags

from albert_jax import cli
from albert_jax.checkpoints import export

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Source: any checkpoint `checkpoints.load` reads.")
_OUTPUT = flags.DEFINE_string("output", None, "Directory to write the Hugging Face model to.")
_VOCAB = flags.DEFINE_string("vocab", None, "SentencePiece model; default: the spiece.model of --checkpoint.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace a non-empty --output (after the export is complete).")
_ARCHITECTURE = flags.DEFINE_enum(
  "architecture",
  export.ARCHITECTURES[0],
  list(export.ARCHITECTURES),
  "Which transformers class the weights are for; AlbertForMaskedLM drops the pooler and SOP head.",
)


def main():
  print(f"Wrote {export.export(_CHECKPOINT.value, _OUTPUT.value, _OVERWRITE.value, _VOCAB.value, _ARCHITECTURE.value)}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["checkpoint", "output"])
  cli.run(main)
