"""Genie training: window loader over ingest shards, tokenizer phase, LAM + dynamics phase.

Nothing is imported here: `genie_pipeline.config` imports `training.config`, which must stay
free of torch. The public API lives in its modules: `training.run` (`train_main`,
`check_train_config`, `build_model_config` from `training.checks`), `training.trainer` (`PhaseTrainer`),
`training.loader` (`WindowLoader`, `WindowDataset`), `training.decoders`, `training.play`
(`play`), `training.errors` (`TrainingError`).
"""
