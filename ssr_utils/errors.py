"""Errors the SSR packages raise for their users (kept apart from the BasicSR compatibility layer)."""
from contextlib import contextmanager


class OptionError(ValueError):
    """A bad option value: one line naming the key and the value (``key``, ``value``, ``problem``).

    A ``ValueError``, so that ``except ValueError`` (or ``Exception``) around a library call catches it. The
    launchers and console commands turn it into their one-line exit (``exit_on_option_error``)."""

    def __init__(self, key, value, problem):
        self.key, self.value, self.problem = key, value, problem
        super().__init__(f'Option error: {key} = {value!r}: {problem}')

    def __reduce__(self):  # rebuilt from its three parts (pickled across processes)
        return type(self), (self.key, self.value, self.problem)


@contextmanager
def exit_on_option_error():
    """For launchers and console commands (a ``with`` block or a decorator of ``main``): an ``OptionError``
    raised inside stops the program with its one line and exit status 1, instead of a traceback."""
    try:
        yield
    except OptionError as err:
        raise SystemExit(str(err)) from None
