"""A client named in a one-line error keeps the error short enough for the fix it names to be read."""

from kbypass.cp.state import DESCRIBE_COMMAND, Client


def test_a_long_command_line_is_cut_in_an_error_and_a_short_one_kept():
    long = Client(2, 9787, 0, "python -m pytest -q " + "tests/netns/test_x.py " * 20)
    said = long.describe()
    assert said.startswith("client 2 (pid 9787, python -m pytest -q tests/") and said.endswith("...)")
    assert len(said) <= len("client 2 (pid 9787, )") + DESCRIBE_COMMAND
    short = Client(3, 42, 0, "kbypass sink --host b")
    assert short.describe() == "client 3 (pid 42, kbypass sink --host b)"
