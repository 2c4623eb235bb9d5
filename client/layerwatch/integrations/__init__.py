"""Callbacks for training frameworks: one line in the trainer's callbacks.

* `layerwatch.integrations.lightning.LayerwatchCallback` - PyTorch Lightning's
  `Trainer(callbacks=[...])` (extra `layerwatch[lightning]`).
* `layerwatch.integrations.transformers.LayerwatchCallback` - Hugging Face
  Transformers' `Trainer(callbacks=[...])` (extra `layerwatch[transformers]`).

Each module imports its framework, so import the one you use; importing
`layerwatch` or this package imports neither. Both keep the run's step on the
framework's global step (`trainer_run.TrainerRun`).
"""
