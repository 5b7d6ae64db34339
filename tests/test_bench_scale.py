"""`carecard bench scale` runs at a tiny size and prints its figures (no timed assertions): the
SQLite receiver, PostgreSQL with one and two receivers, the engine worker; every acked frame
counted in the store."""

from __future__ import annotations

import json

from receiver_helpers import run_cli


def test_the_scale_benchmark_prints_frames_per_second_per_receiver_count_and_the_engine(pg_cluster) -> None:
    url = pg_cluster.new_database()
    result = run_cli("bench", "scale", "--json", "--devices", "20", "--frames", "300", "--window", "64",
                     "--receivers", "1,2", "--store", url, timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    names = [figure["name"] for figure in report["figures"]]
    assert names[1:] == ["SQLite, 1 receiver", "PostgreSQL, 1 receiver", "PostgreSQL, 2 receivers",
                         "PostgreSQL storage", "engine, 1 worker on PostgreSQL", "engine, 2 workers on PostgreSQL"]
    for figure in report["figures"][1:4]:
        assert "300 acked" in figure["text"] and "300 in the store" in figure["text"]
        assert "0 commits failed" in figure["text"]  # several receivers never fail a batch
        assert figure["numbers"][0] > 0  # frames/s
    assert "bytes per stored frame" in report["figures"][4]["text"]
    assert "600 events of the log" in report["figures"][5]["text"]  # both PostgreSQL runs
    assert "worker 1:" in report["figures"][6]["text"] and "worker 2:" in report["figures"][6]["text"]
    assert "x SQLite" in report["figures"][3]["text"]
