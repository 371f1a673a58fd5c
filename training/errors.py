"""The training package's one error type: a setting that cannot work.

The CLI maps it to exit status 2 and prints `key: message`; `genie_pipeline.config.check_train`
turns it into a `ConfigError` before a command trains.
"""
from __future__ import annotations


class TrainingError(Exception):
    """`key` is the dotted pipeline.yaml key of the offending setting (e.g. `train.batch_size`)."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


class TrainInterrupted(KeyboardInterrupt):
    """Training stopped by SIGINT/SIGTERM after a checkpoint was saved; the message says where
    it stopped and how to resume (the CLI prints it as its one line, exit status 130)."""
