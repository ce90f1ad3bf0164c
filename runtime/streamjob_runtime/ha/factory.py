"""Chooses the HA services for a configuration."""

from __future__ import annotations

from streamjob_runtime.ha import services


def create(
    cfg: services.HaConfig, identity: str
) -> tuple[services.LeaderElector, services.HaStore]:
    """The elector and fenced store of ``cfg.kind`` (not ``none``)."""
    if cfg.kind is services.HaKind.ETCD:
        from streamjob_runtime.ha import etcd

        client = etcd.connect(cfg)
        return etcd.EtcdLeaderElector(cfg, client, identity), etcd.EtcdHaStore(cfg, client)
    if cfg.kind is services.HaKind.KUBERNETES:
        from streamjob_runtime.ha import lease

        return lease.create(cfg, identity)
    raise ValueError(f"no HA services for kind {cfg.kind}")


def create_store(cfg: services.HaConfig) -> services.HaStore:
    """A read-mostly store for TaskManagers and clients that look up the leader."""
    return create(cfg, "reader")[1]
