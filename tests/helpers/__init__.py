"""Helpers shared by the tests. Only `conftest.py` imports them; a test reaches them
through its fixtures, so no test module imports another."""
