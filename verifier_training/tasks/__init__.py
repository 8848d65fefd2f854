"""Task worlds: problem generators, reference solutions and answer checkers."""
