"""Code shared by every convocate role: protocol, model, paths, errors, keys.

``convocate_agent`` and ``convocate_host`` import only this subpackage of
``convocate``; it must stay free of shell-only dependencies (npyscreen).
"""
