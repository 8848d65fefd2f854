"""Training: ``sft`` (a world's policy), ``orm`` and ``prm`` (verifiers), ``tokenizer`` (the
project's tokenizers), ``trainer`` (the rails all of them run on: ``transformers.Trainer`` with
the project's optimiser, schedule and batches), ``common`` (what the ORM and PRM trainers
share)."""
