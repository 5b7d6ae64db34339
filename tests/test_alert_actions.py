"""Acknowledging and resolving alerts: `carecard alerts` (list, ack, resolve), the signed HTTP
endpoint (a real request on loopback) and the MQTT topic (a real mosquitto), each carried out by
the engine of a real receiver."""

from __future__ import annotations

import http.client
import json
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from carecard.host.receiver.config import Endpoint
from carecard.host.receiver.service import ReceiverThread
from carecard.host.sinks.webhook import sign

from brokers import Mosquitto
from receiver_helpers import Card, exchange, provision, run_cli, udp_client
from test_engine_receiver import Clock, _config, _steps, _still_position, _store, _sync

SECRET = "alert-actions-secret-0001"


def _card(data_dir: Path) -> Card:
    device, key = next(iter(provision(data_dir, 1).items()))
    return Card(device, key)


def _inactivity_alert(tmp_path: Path, rt: ReceiverThread, clock: Clock, card: Card) -> str:
    """A still card, past its threshold: an inactivity alert at its check-in step; its id."""
    client = udp_client()
    for _ in range(2):
        assert exchange(client, rt.receiver.udp_ports[0], _still_position(card, clock)) is not None
    _sync(rt)
    clock.offset = 61
    _sync(rt)
    store = _store(tmp_path)
    (alert,) = store.list_alerts()
    store.close()
    return alert.id


def test_alerts_are_listed_acknowledged_and_resolved_from_the_command_line(tmp_path: Path) -> None:
    clock = Clock()
    card = _card(tmp_path)
    with ReceiverThread(_config(tmp_path), engine_clock=clock) as rt:
        alert_id = _inactivity_alert(tmp_path, rt, clock, card)
        data = ("--data", str(tmp_path))
        listed = run_cli("alerts", "--json", *data)
        assert listed.returncode == 0, listed.stderr
        (row,) = [json.loads(line) for line in listed.stdout.splitlines()]
        assert (row["id"], row["kind"], row["state"], row["step"]) == (alert_id, "inactivity", "open", "checkin")
        assert alert_id in run_cli("alerts", "--kind", "inactivity", "--state", "open", *data).stdout
        assert run_cli("alerts", "--kind", "sos", *data).stdout.startswith("no alerts")
        ack = run_cli("alerts", "ack", alert_id, "--by", "Son Wang", "--reason", "on my way", "--wait", "20", *data)
        assert ack.returncode == 0, ack.stderr
        assert f"alert {alert_id}: acknowledged by Son Wang" in ack.stdout
        clock.offset = 200  # past every escalation window: an acknowledged alert goes no further
        _sync(rt)
        assert _steps(tmp_path) == [("inactivity", "checkin"), ("inactivity", "acknowledged")]
        again = run_cli("alerts", "ack", alert_id, "--by", "Li", *data)
        assert again.returncode == 1 and "already acknowledged by Son Wang" in again.stderr
        done = run_cli("alerts", "resolve", alert_id, "--by", "Grid worker Li", "--reason", "visited: fine",
                       "--wait", "20", "--json", *data)
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        assert result["request"]["outcome"] == "done" and result["request"]["reason"] == "visited: fine"
        assert (result["alert"]["state"], result["alert"]["closed_reason"], result["alert"]["closed_by"]) == (
            "resolved", "resolved_by_hand", "Grid worker Li")
        assert result["alert"]["acknowledged_by"] == "Son Wang"
        late = run_cli("alerts", "resolve", alert_id, "--by", "Li", *data)
        assert late.returncode == 1 and "already resolved by Grid worker Li" in late.stderr
        unknown = run_cli("alerts", "ack", "no-such-alert", "--by", "Li", *data)
        assert unknown.returncode == 1 and "no alert has the id 'no-such-alert'" in unknown.stderr
        assert run_cli("alerts", *data).stdout.startswith("no alerts open")
        assert alert_id in run_cli("alerts", "--all", *data).stdout
    events = [e for e in _alert_events_of(tmp_path) if e["data"]["details"]["step"] == "resolved"]
    assert events[0]["data"]["details"]["reason"] == "visited: fine"


def _alert_events_of(tmp_path: Path) -> list[dict[str, Any]]:
    from test_engine_receiver import _alert_events

    return _alert_events(tmp_path)


def _post(port: int, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", "/v1/alert-actions", body, {"Content-Type": "application/json", **headers})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def _signed(body: bytes, stamp: int | None = None, secret: str = SECRET) -> dict[str, str]:
    timestamp = str(int(time.time()) if stamp is None else stamp)
    return {"X-CareCard-Timestamp": timestamp, "X-CareCard-Signature": sign(secret, timestamp, body)}


def test_a_signed_http_request_acknowledges_and_bad_ones_are_refused_and_counted(tmp_path: Path) -> None:
    clock = Clock()
    config = _config(tmp_path)
    config.engine.http = Endpoint("127.0.0.1", 0)
    config.engine.http_secret = SECRET
    card = _card(tmp_path)
    with ReceiverThread(config, engine_clock=clock) as rt:
        alert_id = _inactivity_alert(tmp_path, rt, clock, card)
        server = rt.receiver.alert_http
        port = server.port
        body = json.dumps({"alert_id": alert_id, "action": "acknowledge", "by": "backend:ops"}).encode()
        assert _post(port, body, {}) == (401, {"error": _post(port, body, {})[1]["error"]})
        assert "missing X-CareCard-Signature" in _post(port, body, {})[1]["error"]
        status, answer = _post(port, body, _signed(body, secret="another-secret-00000"))
        assert status == 401 and "does not match" in answer["error"]
        status, answer = _post(port, body, _signed(body, stamp=int(time.time()) - 3600))
        assert status == 401 and "from the receiver's clock" in answer["error"]
        signed = _signed(body)
        status, answer = _post(port, body, signed)
        assert status == 202 and answer["state"] == "accepted" and answer["alert_id"] == alert_id
        status, answer = _post(port, body, signed)  # the same signed request again
        assert status == 409 and "replay" in answer["error"]
        bad = b'{"alert_id": "x", "action": "close", "by": "ops"}'
        status, answer = _post(port, bad, _signed(bad))
        assert status == 400 and "action must be one of acknowledge, resolve" in answer["error"]
        unknown = json.dumps({"alert_id": "nope", "action": "resolve", "by": "ops"}).encode()
        assert _post(port, unknown, _signed(unknown))[0] == 404
        _sync(rt)
        store = _store(tmp_path)
        alert = store.get_alert(alert_id)
        store.close()
        assert alert is not None and (alert.state, alert.acknowledged_by) == ("acknowledged", "backend:ops")
        again = json.dumps({"alert_id": alert_id, "action": "acknowledge", "by": "other"}).encode()
        status, answer = _post(port, again, _signed(again))
        assert status == 409 and "already acknowledged by backend:ops" in answer["error"]
        assert dict(server.counts) == {"missing_signature": 3, "bad_signature": 1, "stale_timestamp": 1,
                                       "accepted": 1, "replayed": 1, "bad_request": 1, "unknown_alert": 1,
                                       "alert_state": 1}
        metrics = rt.call(rt.receiver.metrics.render).splitlines()
        assert "carecard_alert_actions_http_replayed 1" in metrics
        assert "carecard_alert_actions_http_bad_signature 1" in metrics


@pytest.fixture
def broker(tmp_path: Path) -> Any:
    folder = tmp_path / "broker"
    folder.mkdir()
    server = Mosquitto(folder)
    server.start()
    yield server
    server.close()


def test_a_request_on_the_mqtt_topic_acknowledges_and_the_outcome_is_published(tmp_path: Path, broker: Any) -> None:
    clock = Clock()
    data = tmp_path / "data"
    data.mkdir()
    config = _config(data, sinks=[{"type": "mqtt", "name": "backend", "host": "127.0.0.1", "port": broker.port}])
    config.engine.mqtt_sink = "backend"
    answers: list[dict[str, Any]] = []
    got = threading.Condition()

    def on_message(client: Any, userdata: Any, message: Any) -> None:
        with got:
            answers.append(json.loads(message.payload))
            got.notify_all()

    backend = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-backend")
    backend.on_message = on_message
    backend.connect("127.0.0.1", broker.port, 30)
    backend.subscribe("carecard/v1/alert_actions/result", qos=1)
    backend.loop_start()
    card = _card(data)
    try:
        with ReceiverThread(config, engine_clock=clock) as rt:
            alert_id = _inactivity_alert(data, rt, clock, card)
            # the receiver subscribes once connected: probe with a request it refuses until one answers
            deadline = time.monotonic() + 20
            with got:
                while not answers and time.monotonic() < deadline:
                    backend.publish("carecard/v1/alert_actions", b"not json", qos=1)
                    got.wait(0.2)
            assert answers and answers[0]["ok"] is False and "not UTF-8 JSON" in answers[0]["error"]
            count = len(answers)
            request = {"alert_id": alert_id, "action": "acknowledge", "by": "+8613800138000 Son", "reason": "calling"}
            backend.publish("carecard/v1/alert_actions", json.dumps(request).encode(), qos=1)
            with got:
                assert got.wait_for(lambda: len(answers) > count and answers[-1]["ok"], 20)
            answer = answers[-1]
            assert (answer["alert_id"], answer["action"], answer["error"]) == (alert_id, "acknowledge", None)
            _sync(rt)
            store = _store(data)
            alert = store.get_alert(alert_id)
            (handled,) = store.list_alert_actions(alert_id)
            store.close()
            assert alert is not None and (alert.state, alert.acknowledged_by) == ("acknowledged", "+8613800138000 Son")
            assert (handled.source, handled.outcome, handled.reason) == ("mqtt", "done", "calling")
            assert rt.receiver.alert_mqtt.counts["accepted"] == 1
    finally:
        backend.loop_stop()
        backend.disconnect()
