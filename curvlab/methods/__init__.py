"""Optimizer transforms: the four papers and first-order baselines."""
