"""Test support shipped with kbypass: the pytest plugin with the `testbed` fixture.

Use it from a conftest.py with ``pytest_plugins = ["kbypass.testing.plugin"]``.
"""
