"""Errors the SSR packages raise for their users (kept apart from the BasicSR compatibility layer)."""


class OptionError(SystemExit):
    """A bad option value found at start-up; exits with one line naming the key and the value.

    A ``SystemExit`` so that BasicSR's launchers stop with that line instead of a traceback.
    """

    def __init__(self, key, value, problem):
        self.key, self.value, self.problem = key, value, problem
        super().__init__(f'Option error: {key} = {value!r}: {problem}')
