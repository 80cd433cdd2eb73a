"""Training tasks, one module per task: ``expr``, ``seg``, ``anomaly``, ``mil`` (the image
tasks ``clip`` and ``ssl`` live beside :mod:`mmpath.train.core`). Each runs through the one
loop, :func:`mmpath.train.fit`."""
