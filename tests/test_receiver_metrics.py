"""What an operator scrapes from a running `carecard receive` (a real process, its sinks and its
alert engine in processes of their own): frames stored and rejected by reason, the commit latency
histogram, a sink's lag behind the log head while its NATS server is down, back to 0 once it is
up (the events then in the JetStream stream), and the engine's partition, lease age and lag."""

from __future__ import annotations

import asyncio
import re
import time
import urllib.request
from pathlib import Path

import nats

from nats_cluster import NatsCluster
from receiver_helpers import Card, ReceiverProcess, exchange, provision, udp_client


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def scrape_until(port: int, predicate, what: str, timeout: float = 20.0) -> dict[str, float]:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(port)
        if predicate(samples):
            return samples
        if time.monotonic() > deadline:
            raise AssertionError(f"no scrape showed {what} in {timeout} s: {samples}")
        time.sleep(0.1)


def test_an_operator_sees_frames_commit_latency_and_a_sinks_lag_while_nats_is_down(tmp_path: Path) -> None:
    devices = provision(tmp_path, 1)
    card = Card(*next(iter(devices.items())))
    nats_server = NatsCluster(tmp_path / "nats", 1)
    nats_server.nodes[0].write_config()  # down at first
    config = tmp_path / "carecard.toml"
    config.write_text(
        '[[sinks]]\ntype = "sqlite"\n\n'
        f'[[sinks]]\ntype = "nats"\nname = "bus"\nservers = "{nats_server.urls[0]}"\n'
        "retry_min = 0.05\nretry_max = 0.3\nconnect_timeout = 0.5\nreconnect_wait = 0.1\n\n"
        "[engine]\npoll_s = 0.2\n")
    receiver = ReceiverProcess(tmp_path, "--config", str(config), metrics=True)
    try:
        port = receiver.metrics_port
        assert port
        client = udp_client()
        for _ in range(5):
            assert exchange(client, receiver.udp_port, card.frame()) is not None
        assert exchange(client, receiver.udp_port, b"\x01" * 40, timeout=0.3) is None
        # the sink process reports its figures at every delivery and at least once a second
        down = scrape_until(port, lambda s: s.get('carecard_sink_lag_events{sink="bus"}') == 5
                            and s.get('carecard_sink_lag_events{sink="sqlite"}') == 0
                            and s.get('carecard_sink_up{sink="bus",state="retrying"}') == 0,
                            "the NATS sink 5 behind and failing")
        nats_server.nodes[0].start()
        nats_server.wait_ready()
        up = scrape_until(port, lambda s: s.get('carecard_sink_lag_events{sink="bus"}') == 0, "the lag gone")
        engine = scrape_until(port, lambda s: s.get('carecard_engine_lag_events{partition="engine"}') == 0
                              and s.get('carecard_engine_partition_cursor{partition="engine"}', 0) >= 5,
                              "the engine caught up")
    finally:
        receiver.terminate()
        status = asyncio.run(_stream_messages(nats_server.urls))
        nats_server.stop()

    assert down['carecard_frames_stored_total{type="position"}'] == 5
    assert sum(v for k, v in down.items() if k.startswith("carecard_frames_rejected_total{")) == 1
    assert down['carecard_sink_delivered_total{sink="bus"}'] == 0
    # the commit latency histogram: cumulative buckets ending in the commit count
    buckets = sorted(((float(m.group(1)) if m.group(1) != "+Inf" else float("inf"), v)
                      for k, v in down.items()
                      if (m := re.fullmatch(r'carecard_commit_seconds_bucket\{le="([^"]+)"\}', k))))
    assert len(buckets) == 14 and buckets[-1][0] == float("inf")
    counts = [v for _, v in buckets]
    assert counts == sorted(counts) and counts[-1] == down["carecard_commit_seconds_count"] == down["carecard_commits_total"]
    assert down["carecard_commits_total"] >= 1 and down["carecard_commit_seconds_sum"] > 0
    assert up['carecard_sink_delivered_total{sink="bus"}'] == 5
    assert up['carecard_sink_failures_total{sink="bus"}'] >= 1
    assert status >= 5  # the frames' events (and any alert the engine raised)
    assert engine['carecard_engine_partition_held{partition="engine"}'] == 1
    assert engine['carecard_engine_lease_age_seconds{partition="engine"}'] > 0
    assert engine["carecard_engine_active"] == 1


async def _stream_messages(servers: list[str]) -> int:
    nc = await nats.connect(servers=servers)
    try:
        return (await nc.jetstream().stream_info("CARECARD")).state.messages
    finally:
        await nc.close()
