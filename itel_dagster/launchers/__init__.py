"""Run launchers: how a queued run becomes a running process."""
