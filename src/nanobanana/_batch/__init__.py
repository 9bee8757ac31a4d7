"""Batches: many generations through one client, lazily, resumably (``client.batch()``).

- `_values`: what goes in and comes out (`BatchRequest`, `BatchResult`, `BatchStats`);
- `_keys`: what identifies an item from one run to the next;
- `_journal`: the file that makes a batch resumable, and `_records`: what is in it;
- `_item`: one item, from its first request to its result;
- `_engine`: `Batch`, the iterator, and the task that runs the items.

Nothing is imported here: ``import nanobanana`` loads only `_values`, and the engine
loads on the first ``client.batch()``.
"""

__all__: list[str] = []
