"""Post-training a policy with its own samples: ``rsft``, ``dpo``, ``distill`` (each built on
``rounds``: sample, measure, train with TRL), ``selection`` (what a rule keeps), ``export``
(the same data as files for other trainers)."""
