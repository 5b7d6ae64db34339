"""The host receiver: `carecard receive`.

    transports (UDP / TCP / serial)  ->  Ingest (decode, authenticate, replay check, batch)
        ->  IngestStore.prepare / finish (frames + events + downlink state, one transaction)
        ->  acks sent (only for what was committed)  ->  sinks notified

Modules: config (TOML + flags), ingest (the pipeline, sans-I/O apart from the store; the storage
interfaces are carecard.host.storage; a downlink command's states and transitions are
carecard.host.downlink_lifecycle), downlinks (the command queue), registry (devices, names, contacts, keys), budget (per-source reject budgets), metrics
(Prometheus exposition), transports (asyncio UDP/TCP, pyserial), service (wires it all together).
"""
