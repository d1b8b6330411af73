"""The ``train`` stage: objectives, the trainer, checkpoints and the training recipe."""
