"""Evaluation: scoring (jit-compiled loglikelihood and greedy generation), prompts, metrics, harness."""
