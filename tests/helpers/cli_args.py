"""Command-line fragments that tests append to ``main.py`` / ``cli_main`` arguments."""

# Nothing a test reads is in the progress bar or the model summary; leaving them out keeps captured output short.
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
# One epoch of two training batches and two validation batches: enough for a run to write its checkpoint. Not
# `limit_val_batches=1`: Trainer declares it `float | int`, so the CLI parses "1" as 1.0, which Lightning reads as
# 100% of the batches; "2" parses as 2.0, which Lightning reads as two batches.
SHORT = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=2"]
# One CPU process, whatever the config asks for (GPU configs are parsed on this machine too).
CPU = ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.strategy=auto"]
