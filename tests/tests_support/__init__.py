"""Importable helpers for the tests (tests/ is on sys.path): user-defined networks for ``model=custom``."""
