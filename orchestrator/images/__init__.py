"""Disk images built from hosts' configurations (`orchestrate image ...`)."""
