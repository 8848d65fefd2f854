"""A user's own checker for ``--checker py:my_checker:same_parity`` (tests only)."""


def same_parity(completion: str, reference: str) -> bool:
    digits = [c for c in completion if c.isdigit()]
    if not digits:
        raise ValueError("no number")  # a checker that raises counts the candidate wrong
    return int(digits[-1]) % 2 == int(reference) % 2
