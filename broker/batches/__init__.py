"""Batches: the batch store, uploaded files, the batcher's lease, the batcher and its
result files."""
