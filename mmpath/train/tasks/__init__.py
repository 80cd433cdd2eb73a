"""Training tasks, one module per task (``mil``; older tasks still live beside ``core``)."""
