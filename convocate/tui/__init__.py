"""The operator's npyscreen TUI (``convocate`` with no arguments).

Only the shell role imports this package; npyscreen is imported here and
nowhere in ``convocate.common``.
"""
