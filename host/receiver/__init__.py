"""The host receiver: `carecard receive`.

    transports (UDP / TCP / serial)  ->  Ingest (decode, authenticate, replay check, batch)
        ->  Store.commit (frames + events + downlink state, one SQLite transaction)
        ->  acks sent (only for what was committed)  ->  sinks notified

Modules: config (TOML + flags), ingest (the pipeline, sans-I/O apart from the store), store (the
storage interface and its SQLite implementation), registry (devices, names, contacts, keys),
downlinks (command queue and ack encoding), budget (per-source reject budgets), metrics
(Prometheus exposition), transports (asyncio UDP/TCP, pyserial), service (wires it all together).
"""
