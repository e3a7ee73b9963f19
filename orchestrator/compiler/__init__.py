"""Compile stage: an evaluated fleet to Ansible content, written atomically (`build`), and
the light checks of whether a build is current (`freshness`)."""
