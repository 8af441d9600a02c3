"""Trust-region subproblems: KL (paper 001) and l2."""
