"""Evaluation stage: the module system (options, priorities, merge, when, expressions, fixpoint)."""
