"""The composition root: the ``promptbus`` commands and ``promptbus up``, the only place
that imports everything."""
