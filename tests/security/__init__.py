"""Attacks on every trust boundary of docs/security.md, each against real containers and daemons."""
