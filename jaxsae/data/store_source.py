"""Training batches from an activation store (`--config.data.source=store --config.data.path=DIR`):
a random-access global shuffle over every row of one site (all shards, every epoch reshuffled from
the seed), each process reading only its share of every global batch straight from the memory-mapped
shards. Batching, read-ahead and the checkpointed iterator state are the Grain pipeline's
(jaxsae.data.pipeline)."""

from __future__ import annotations

from jaxsae.data.arrays import ArraySource
from jaxsae.data.store import Store, StoreError


class StoreSource(ArraySource):
    def __init__(self, path: str, site: str | None, seed: int, batch_size: int, process: tuple[int, int] = (0, 1),
                 verify: bool = True):
        store = Store(path, verify=verify)
        if site is None:
            if len(store.sites) != 1:
                raise StoreError(f"{path} holds sites {store.sites}; choose one with --config.data.site")
            site = store.sites[0]
        self.store, self.site = store, site
        self.info = store.manifest["sites"][site]
        self.model_name = store.manifest.get("model")
        super().__init__(store.site(site), None, seed, batch_size, process=process)
