"""Secrets: SOPS files encrypted with age to admins and to the hosts that use them."""
