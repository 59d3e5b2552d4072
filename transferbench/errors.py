"""The one exception type users see: a one-line message that names the input and the fix."""


class TransferbenchError(Exception):
    """Bad input or an unrecoverable run condition, reported to the user as one line.

    The CLI prints ``error: <message>`` and exits with status 2, without a traceback.
    Messages must name the offending file/flag and say how to fix it.
    """

    def __init__(self, message: str):
        super().__init__(" ".join(message.split()))
