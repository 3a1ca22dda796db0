"""User-facing errors: one line that names the problem and how to fix it."""


class BridgeError(Exception):
    """A problem with the user's input or environment that qdq_bridge cannot work around.

    The message is a single line naming the problem and the fix; the CLI prints it and exits non-zero.
    """

    def __init__(self, problem: str, fix: str):
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem}: {fix}" if fix else problem)
