"""Training: ``sft`` (a world's policy), ``orm`` and ``prm`` (verifiers), ``tokenizer`` (the
project's tokenizers), ``loop`` (the one optimisation loop all of them run), ``common``
(what the ORM and PRM trainers share)."""
