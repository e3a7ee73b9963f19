"""Execute stage: the ansible-runner adapter; typed events and results."""
