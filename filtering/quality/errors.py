"""The quality package's one error type (kept free of imports: the CLI and every module load it)."""


class QualityError(Exception):
    """A problem with labels, clips, a model file or a quality setting, with a message meant
    for the user (a setting's message starts with its key); the CLI exits 2 on it."""
