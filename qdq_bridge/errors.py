"""User-facing errors: one line that names the problem and how to fix it."""


class BridgeError(Exception):
    """A problem with the user's input or environment that qdq_bridge cannot work around.

    The message is a single line naming the problem and the fix; the CLI prints it and exits non-zero.
    """

    def __init__(self, problem: str, fix: str):
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem}: {fix}" if fix else problem)


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message, or its type name when the message is empty."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
