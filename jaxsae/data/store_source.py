"""Training batches from an activation store (`--config.data.source=store --config.data.path=DIR`):
a random-access global shuffle over every row of one site (all shards, every epoch reshuffled from
the seed), each process reading only its share of every global batch straight from the memory-mapped
shards. Batching, read-ahead and the checkpointed iterator state are the Grain pipeline's
(jaxsae.data.pipeline)."""

from __future__ import annotations

from jaxsae.data.arrays import ArraySource, StackedRows
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


class LayeredStoreSource(ArraySource):
    """Batches [B, L, d] of several sites of one store (`data.in_sites` read, `data.out_sites`
    predicted; one per layer), row-aligned because one harvest forward wrote them all."""

    def __init__(self, path: str, in_sites: tuple[str, ...], out_sites: tuple[str, ...], seed: int, batch_size: int,
                 process: tuple[int, int] = (0, 1), verify: bool = True):
        store = Store(path, verify=verify)
        missing = [s for s in (*in_sites, *out_sites) if s not in store.sites]
        if missing:
            raise StoreError(f"{path} lacks the site(s) {missing}; it holds {store.sites}. Harvest them together: "
                             "--config.data.lm.sites=(...every in and out site...)")
        self.store, self.site = store, in_sites[0]
        self.in_sites, self.out_sites = tuple(in_sites), tuple(out_sites or in_sites)
        self.model_name = store.manifest.get("model")
        x = StackedRows([store.site(s) for s in self.in_sites], list(self.in_sites))
        y = None if self.out_sites == self.in_sites else StackedRows([store.site(s) for s in self.out_sites],
                                                                     list(self.out_sites))
        super().__init__(x, y, seed, batch_size, process=process)


class ModelsStoreSource(ArraySource):
    """Batches [B, M, d] of one site of M stores, one per model (crosscoder model diffing). The
    stores must hold the same token windows (same text, windows, context and seed; models that
    share a tokenizer): row r of every store is then the same token."""

    def __init__(self, paths: tuple[str, ...], site: str | None, seed: int, batch_size: int,
                 process: tuple[int, int] = (0, 1), verify: bool = True):
        stores = [Store(p, verify=verify) for p in paths]
        site = site or stores[0].sites[0]
        keys = ("text", "context", "seed", "windows_total", "tokens")
        ref = {k: stores[0].manifest.get(k) for k in keys}
        for p, st in zip(paths, stores):
            if site not in st.sites:
                raise StoreError(f"{p} has no site {site!r}; it holds {st.sites}")
            mine = {k: st.manifest.get(k) for k in keys}
            if mine != ref:
                diff = [k for k in keys if mine[k] != ref[k]]
                raise StoreError(f"{p} was harvested from other token windows than {paths[0]} (differs in {diff}); "
                                 "harvest every model with the same text, windows, context and seed")
        self.store, self.site = stores[0], site
        self.in_sites = (site,) * len(paths)
        self.models = tuple(st.manifest.get("model") for st in stores)
        self.model_name = " | ".join(str(m) for m in self.models)
        x = StackedRows([st.site(site) for st in stores], list(paths))
        super().__init__(x, None, seed, batch_size, process=process)
