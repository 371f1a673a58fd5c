"""Genie training: data loader over ingest shards, tokenizer phase, LAM + dynamics phase.

Light on purpose (genie_pipeline.config imports training.config): the heavy modules load on
first use. Entry points: `training.trainer.train_main`, `training.cli.add_train_args` /
`run_train`, `python -m training`, `python -m training.play`.
"""


def __getattr__(name):
    if name == "train_main":
        from .trainer import train_main

        return train_main
    if name in ("add_train_args", "run_train"):
        from . import cli

        return getattr(cli, name)
    raise AttributeError(name)
