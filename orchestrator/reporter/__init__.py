"""Report stage: rendering of options, explanations and runs."""
