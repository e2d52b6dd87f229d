"""Tests that drive the real Claude Code (the pinned npm build in ``convocate:<version>``) through the real
agent and tmux, against a scripted fake Messages API inside each session's own network namespace."""
