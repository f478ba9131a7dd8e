"""Servers and helpers shared by the tests (registered as pytest plugins in ``tests/conftest.py``)."""
