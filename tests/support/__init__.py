"""Helpers the tests share: importable modules, written once (fixtures live in conftest.py)."""
