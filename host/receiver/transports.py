"""Transports: the only receiver code that touches sockets and serial ports.

- UDP: one datagram = one bare frame; the ack goes back to the datagram's source address. The
  socket is read with `loop.add_reader` and drained up to `max_per_wake` datagrams per wake-up
  (cheaper than one callback per datagram), then the service is told to batch.
- TCP: the stream framing of carecard.protocol.framing (COBS + CRC-32) both ways; one
  StreamDeframer per connection resynchronises after garbage; a connection whose garbage is over
  its source's budget, idle too long, or not reading its acks is closed; an address at its
  connection limit, or a full listener, makes room by closing the idlest connection (of that
  address, or of the address with the most), so a new address always gets in.
- Serial (pyserial; a gateway modem or a card on USB): the same framing, read by a thread that
  hands bytes to the event loop; acks written by a second thread; the port is reopened after it
  disappears (USB unplugged).

Each calls `handle(frame, reply, address, source, transport, received_at)` (Ingest.handle) and
then `on_input()` (the service's batching).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import queue
import socket
import threading
import time
from typing import Any, Callable

from carecard.host.receiver.config import Endpoint, SerialPort
from carecard.host.receiver.metrics import Metrics
from carecard.protocol import StreamDeframer, encode_stream_frame, spec
from carecard.protocol.framing import StreamFrame

log = logging.getLogger("carecard.receiver.transports")

Handle = Callable[[bytes, Callable[[bytes, Any], None], Any, Any, str, float], Any]
OnInput = Callable[[], None]

_RECV_SIZE = spec.MAX_FRAME + 1  # one more than the largest frame: longer datagrams are oversize


class TransportError(RuntimeError):
    """A listener cannot start; the message names the address and the reason."""


def _describe_os_error(exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return "address already in use (another receiver running? pick another port)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return "address not available on this machine"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied (ports below 1024 need privileges)"
    return exc.strerror or str(exc)


class UdpListener:
    transport = "udp"

    def __init__(self, endpoint: Endpoint, handle: Handle, on_input: OnInput, metrics: Metrics, *,
                 receive_buffer: int = 4 * 1024 * 1024, max_per_wake: int = 256,
                 clock: Callable[[], float] = time.time):
        self.endpoint = endpoint
        self.clock = clock  # stamps received_at
        self.handle = handle
        self.on_input = on_input
        self.metrics = metrics
        self.receive_buffer = receive_buffer
        self.max_per_wake = max_per_wake
        self.sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reading = False
        self.address: tuple[Any, ...] | None = None

    def open(self) -> None:
        where = f"UDP {self.endpoint}"
        try:
            infos = socket.getaddrinfo(self.endpoint.host, self.endpoint.port, type=socket.SOCK_DGRAM)
        except socket.gaierror as exc:
            raise TransportError(f"{where}: cannot resolve {self.endpoint.host!r}: {exc.strerror}") from None
        family, kind, proto, _name, address = infos[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.receive_buffer)
            except OSError:
                pass  # capped by net.core.rmem_max: the kernel keeps its own limit
            sock.bind(address)
        except OSError as exc:
            sock.close()
            raise TransportError(f"{where}: {_describe_os_error(exc)}") from None
        self.sock = sock
        self.address = sock.getsockname()

    @property
    def port(self) -> int:
        assert self.address is not None
        return self.address[1]

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.resume()
        log.info("listening on UDP %s (receive buffer %d bytes)", self.endpoint_text,
                 self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) if self.sock else 0,
                 extra={"fields": {"transport": "udp", "address": self.endpoint_text}})

    @property
    def endpoint_text(self) -> str:
        if self.address is None:
            return str(self.endpoint)
        return str(Endpoint(str(self.address[0]), self.address[1]))

    def pause(self) -> None:
        if self._reading and self._loop is not None and self.sock is not None:
            self._loop.remove_reader(self.sock.fileno())
            self._reading = False

    def resume(self) -> None:
        if not self._reading and self._loop is not None and self.sock is not None:
            self._loop.add_reader(self.sock.fileno(), self._read_ready)
            self._reading = True

    def _read_ready(self) -> None:
        sock = self.sock
        if sock is None:
            return
        recvfrom = sock.recvfrom
        handle = self.handle
        send = self.send
        # One clock reading per wake: the datagrams drained here were all waiting when it woke.
        now = self.clock()
        for _ in range(self.max_per_wake):
            try:
                data, address = recvfrom(_RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # e.g. ECONNREFUSED from an ICMP error for an earlier ack
                log.debug("UDP receive error on %s: %s", self.endpoint_text, exc)
                continue
            handle(data, send, address, address[0], "udp", now)
        self.on_input()

    def send(self, data: bytes, address: Any) -> None:
        sock = self.sock
        if sock is None:
            self.metrics.ack_send_errors += 1
            return
        try:
            sock.sendto(data, address)
        except OSError:
            self.metrics.ack_send_errors += 1

    def close(self) -> None:
        self.pause()
        if self.sock is not None:
            self.sock.close()
            self.sock = None


class TcpListener:
    transport = "tcp"

    def __init__(self, endpoint: Endpoint, handle: Handle, on_input: OnInput, metrics: Metrics,
                 charge: Callable[[Any], bool], *, max_connections: int = 1024,
                 max_per_address: int = 32, idle_timeout: float = 900.0,
                 max_unsent: int = 256 * 1024, clock: Callable[[], float] = time.time):
        self.endpoint = endpoint
        self.clock = clock  # stamps received_at
        self.handle = handle
        self.on_input = on_input
        self.metrics = metrics
        self.charge = charge
        self.max_connections = max_connections
        self.max_per_address = max_per_address
        self.idle_timeout = idle_timeout
        self.max_unsent = max_unsent
        self.server: asyncio.base_events.Server | None = None
        # open connection -> [source address, monotonic time of its last data (or of its accept)]
        self.connections: dict[asyncio.StreamWriter, list[Any]] = {}
        self._by_source: dict[Any, set[asyncio.StreamWriter]] = {}
        self._evictions_logged = 0.0
        self._evictions_unlogged = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self.address: tuple[Any, ...] | None = None

    async def open(self) -> None:
        try:
            self.server = await asyncio.start_server(self._client, self.endpoint.host, self.endpoint.port,
                                                     limit=65536, start_serving=False)
        except OSError as exc:
            raise TransportError(f"TCP {self.endpoint}: {_describe_os_error(exc)}") from None
        self.address = self.server.sockets[0].getsockname()

    @property
    def port(self) -> int:
        assert self.address is not None
        return self.address[1]

    async def start(self) -> None:
        assert self.server is not None
        await self.server.start_serving()
        text = str(Endpoint(str(self.address[0]), self.address[1]) if self.address else self.endpoint)
        log.info("listening on TCP %s", text, extra={"fields": {"transport": "tcp", "address": text}})

    @property
    def serving(self) -> bool:
        """Listening and accepting connections."""
        return self.server is not None and self.server.is_serving() and not self._stopping

    def pause(self) -> None:
        self._stopping = True
        if self.server is not None:
            self.server.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        peer = writer.get_extra_info("peername") or ("?", 0)
        source = peer[0]
        if self._stopping:
            writer.close()
            if task is not None:
                self._tasks.discard(task)
            return
        self._make_room(source)
        state = [source, time.monotonic()]
        self.connections[writer] = state
        self._by_source.setdefault(source, set()).add(writer)
        deframer = StreamDeframer()
        transport = writer.transport

        def send(ack: bytes, _address: Any) -> None:
            if transport.is_closing():
                self.metrics.ack_send_errors += 1
                return
            if transport.get_write_buffer_size() > self.max_unsent:
                log.warning("TCP peer %s does not read its acks: closing", source)
                transport.abort()
                self.metrics.ack_send_errors += 1
                return
            transport.write(encode_stream_frame(ack))

        try:
            while not self._stopping:
                try:
                    data = await asyncio.wait_for(reader.read(65536), self.idle_timeout)
                except asyncio.TimeoutError:
                    log.info("TCP peer %s idle for %g s: closing", source, self.idle_timeout)
                    break
                if not data:
                    break
                state[1] = time.monotonic()
                deframer.receive_data(data)
                now = self.clock()
                over = False
                while (event := deframer.next_event()) is not None:
                    if type(event) is StreamFrame:
                        self.handle(event.frame, send, peer, source, "tcp", now)
                    else:
                        self.metrics.stream_garbage[("tcp", event.reason)] += 1
                        if not self.charge(source):
                            over = True
                self.on_input()
                if over:
                    log.warning("TCP peer %s sends too much garbage (over its budget): closing", source)
                    break
        except (ConnectionError, OSError) as exc:
            log.debug("TCP peer %s: %s", source, exc)
        except asyncio.CancelledError:  # closing the listener
            pass
        finally:
            self._forget(writer)
            writer.close()
            if task is not None:
                self._tasks.discard(task)

    def _forget(self, writer: asyncio.StreamWriter) -> None:
        state = self.connections.pop(writer, None)
        if state is not None:
            same = self._by_source.get(state[0])
            if same is not None:
                same.discard(writer)
                if not same:
                    del self._by_source[state[0]]

    def _make_room(self, source: Any) -> None:
        """Before taking a connection from `source`: if that address has `max_per_address` open,
        close its idlest; if the listener is full, close the idlest connection of the address
        with the most. So one address can never hold more than its share, and a connection from
        an address with none always gets in."""
        same = self._by_source.get(source)
        if same is not None and len(same) >= self.max_per_address:
            self._evict(self._idlest(same), f"{source} has {len(same)} connections open "
                        "(max_connections_per_address)")
        elif len(self.connections) >= self.max_connections:
            most = max(len(group) for group in self._by_source.values())
            busiest = [w for group in self._by_source.values() if len(group) == most for w in group]
            victim = self._idlest(busiest)
            self._evict(victim, f"{len(self.connections)} connections open (max_connections); "
                        f"{self.connections[victim][0]} has the most ({most})")

    def _idlest(self, writers: Any) -> asyncio.StreamWriter:
        connections = self.connections
        return min(writers, key=lambda w: connections[w][1])

    def _evict(self, writer: asyncio.StreamWriter, why: str) -> None:
        source, last = self.connections[writer]
        self._forget(writer)
        writer.transport.abort()
        self.metrics.tcp_evicted += 1
        # logged as a sample (a flood would otherwise log a line per connection); counted always
        now = time.monotonic()
        if now - self._evictions_logged >= 10.0:
            log.warning("TCP connection from %s closed to make room (idle %.0f s): %s; %d more "
                        "closed since the last message", source, now - last, why, self._evictions_unlogged)
            self._evictions_logged = now
            self._evictions_unlogged = 0
        else:
            self._evictions_unlogged += 1

    async def close(self) -> None:
        self.pause()
        for writer in list(self.connections):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.server is not None:
            await self.server.wait_closed()
            self.server = None


class SerialListener:
    transport = "serial"

    def __init__(self, port: SerialPort, handle: Handle, on_input: OnInput, metrics: Metrics,
                 charge: Callable[[Any], bool], *, reopen_interval: float = 2.0,
                 clock: Callable[[], float] = time.time):
        self.port = port
        self.clock = clock  # stamps received_at
        self.handle = handle
        self.on_input = on_input
        self.metrics = metrics
        self.charge = charge
        self.reopen_interval = reopen_interval
        self.serial: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._reader: threading.Thread | None = None
        self._writer: threading.Thread | None = None
        self._out: queue.Queue[bytes | None] = queue.Queue(maxsize=1024)
        self._deframer = StreamDeframer()
        self.source = f"serial:{port.device}"

    def _open_port(self) -> Any:
        import serial  # pyserial

        return serial.serial_for_url(self.port.device, baudrate=self.port.baud, timeout=0.2,
                                     write_timeout=2.0, exclusive=True)

    def open(self) -> None:
        import serial

        try:
            self.serial = self._open_port()
        except (serial.SerialException, OSError, ValueError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise TransportError(f"serial {self.port.device}: cannot open: {reason}") from None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._reader = threading.Thread(target=self._read_loop, name=f"serial-read-{self.port.device}",
                                        daemon=True)
        self._writer = threading.Thread(target=self._write_loop, name=f"serial-write-{self.port.device}",
                                        daemon=True)
        self._reader.start()
        self._writer.start()
        log.info("listening on serial %s at %d baud", self.port.device, self.port.baud,
                 extra={"fields": {"transport": "serial", "address": self.port.device}})

    def _read_loop(self) -> None:
        import serial

        while not self._stop.is_set():
            port = self.serial
            if port is None:
                try:
                    self.serial = port = self._open_port()
                    log.info("serial %s reopened", self.port.device)
                except (serial.SerialException, OSError, ValueError):
                    self._stop.wait(self.reopen_interval)
                    continue
            try:
                data = port.read(max(1, min(port.in_waiting, 65536)))
            except (serial.SerialException, OSError, TypeError) as exc:
                if self._stop.is_set():
                    break
                log.warning("serial %s: %s; reopening every %g s", self.port.device, exc, self.reopen_interval)
                self._close_port()
                continue
            if data and self._loop is not None:
                try:
                    self._loop.call_soon_threadsafe(self._feed, data)
                except RuntimeError:  # loop closed
                    break

    def _feed(self, data: bytes) -> None:
        deframer = self._deframer
        deframer.receive_data(data)
        now = self.clock()
        while (event := deframer.next_event()) is not None:
            if type(event) is StreamFrame:
                self.handle(event.frame, self.send, self.port.device, self.source, "serial", now)
            else:
                self.metrics.stream_garbage[("serial", event.reason)] += 1
                self.charge(self.source)
        self.on_input()

    def send(self, ack: bytes, _address: Any) -> None:
        try:
            self._out.put_nowait(encode_stream_frame(ack))
        except queue.Full:
            self.metrics.ack_send_errors += 1

    def _write_loop(self) -> None:
        import serial

        while True:
            data = self._out.get()
            if data is None:
                return
            port = self.serial
            if port is None:
                self.metrics.ack_send_errors += 1
                continue
            try:
                port.write(data)
            except (serial.SerialException, OSError) as exc:
                self.metrics.ack_send_errors += 1
                log.debug("serial %s write failed: %s", self.port.device, exc)

    def _close_port(self) -> None:
        port, self.serial = self.serial, None
        if port is not None:
            try:
                port.close()
            except Exception:  # closing a vanished port
                pass

    def pause(self) -> None:
        """Stop reading (the writer keeps sending the last acks)."""
        self._stop.set()
        if self._reader is not None:
            self._reader.join(timeout=2.0)

    def close(self, timeout: float = 2.0) -> None:
        self.pause()
        self._out.put(None)
        if self._writer is not None:
            self._writer.join(timeout=timeout)
        self._close_port()
