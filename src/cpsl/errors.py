"""The base of every error a user can fix (bad params, bad or missing input files, unreachable server).

The CLI prints these as one line naming the file/key/segment and exits 1; anything else is a bug and
keeps its traceback.
"""


class PipelineError(Exception):
    """An error in the user's inputs or environment, with a message that says what and where."""
