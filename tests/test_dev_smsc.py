"""``cascade dev smsc``: the local SMSC run as a command binds, accepts submits and sends
receipts; without its optional dependency it says which extra to install."""

from __future__ import annotations

import queue
import signal
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cascade import cli
from cascade.devtools.smsc import ESME_RINVPASWD, free_port

CASCADE = str(Path(sys.executable).with_name("cascade"))
HEADER = struct.Struct("!IIII")
BIND_TRANSCEIVER = 0x00000009
SUBMIT_SM = 0x00000004
DELIVER_SM = 0x00000005
RESPONSE = 0x80000000


def pdu(command_id: int, sequence: int, body: bytes, status: int = 0) -> bytes:
    """One SMPP PDU."""
    return HEADER.pack(HEADER.size + len(body), command_id, status, sequence) + body


def read_pdu(sock: socket.socket) -> tuple[int, int, int, bytes]:
    """The next PDU from ``sock``: command id, status, sequence number and body."""

    def exactly(size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = sock.recv(size - len(data))
            assert chunk, "the SMSC closed the connection"
            data += chunk
        return data

    length, command_id, status, sequence = HEADER.unpack(exactly(HEADER.size))
    return command_id, status, sequence, exactly(length - HEADER.size)


def bind_body(system_id: str, password: str) -> bytes:
    """A bind_transceiver body: system_id, password, system_type, version 3.4, no range."""
    return f"{system_id}\0{password}\0\0".encode() + bytes([0x34, 0, 0]) + b"\0"


def submit_body(source: str, destination: str, text: bytes) -> bytes:
    """A submit_sm body asking for a delivery receipt, GSM default alphabet."""
    return (
        b"\0"  # service_type
        + bytes([1, 1])
        + source.encode()
        + b"\0"
        + bytes([1, 1])
        + destination.encode()
        + b"\0"
        + bytes([0, 0, 0])  # esm_class, protocol_id, priority_flag
        + b"\0\0"  # schedule_delivery_time, validity_period
        + bytes([1, 0, 0, 0, len(text)])  # registered_delivery ... sm_length
        + text
    )


def test_dev_smsc_binds_accepts_a_submit_and_sends_its_receipt() -> None:
    """The command listens on the port given, refuses a wrong password, accepts a submit_sm
    with a message id and sends a DELIVRD receipt for it, printing each, and stops on SIGTERM."""
    port = free_port()
    smsc = subprocess.Popen(
        [CASCADE, "dev", "smsc", "--port", str(port), "--receipt-delay", "0.1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert smsc.stdout is not None
    printed_lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(
        target=lambda: [printed_lines.put(line) for line in smsc.stdout or ()], daemon=True
    )
    reader.start()
    lines: list[str] = []
    try:
        assert f"SMSC listening on 127.0.0.1:{port}" in printed_lines.get(timeout=20)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as intruder:
            intruder.sendall(pdu(BIND_TRANSCEIVER, 1, bind_body("cascade", "wrong")))
            assert read_pdu(intruder)[:2] == (RESPONSE | BIND_TRANSCEIVER, ESME_RINVPASWD)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as esme:
            esme.sendall(pdu(BIND_TRANSCEIVER, 1, bind_body("cascade", "secret")))
            assert read_pdu(esme)[:3] == (RESPONSE | BIND_TRANSCEIVER, 0, 1)
            esme.sendall(pdu(SUBMIT_SM, 2, submit_body("Acme", "447700900000", b"Hello")))
            command, status, sequence, body = read_pdu(esme)
            assert (command, status, sequence) == (RESPONSE | SUBMIT_SM, 0, 2)
            message_id = body.rstrip(b"\0").decode()
            command, _, sequence, body = read_pdu(esme)
            assert command == DELIVER_SM
            assert f"id:{message_id} ".encode() in body
            assert b"stat:DELIVRD" in body
            esme.sendall(pdu(RESPONSE | DELIVER_SM, sequence, b"\0"))
            # the SMSC reports the answer once it has it: wait for that line
            while not any("receipt for" in line for line in lines):
                try:
                    lines.append(printed_lines.get(timeout=10))
                except queue.Empty:
                    raise AssertionError(lines) from None
    finally:
        smsc.send_signal(signal.SIGTERM)
        smsc.wait(timeout=20)
        reader.join(timeout=5)
    err = smsc.stderr.read() if smsc.stderr is not None else ""
    assert smsc.returncode == 0, err
    while not printed_lines.empty():
        lines.append(printed_lines.get())
    printed = "".join(lines)
    assert f"submit_sm Acme -> 447700900000: 'Hello' accepted as {message_id}" in printed
    assert f"receipt for {message_id}: DELIVRD (answered 0)" in printed
    assert "SMSC stopped" in printed


def test_dev_smsc_on_a_port_in_use_names_it() -> None:
    """A port already taken is an error naming the address, exit 1."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(cli.app, ["dev", "smsc", "--port", str(port)])
    assert result.exit_code == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


def test_dev_smsc_without_smpp34_says_which_extra_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without the smpp34 package the command exits 1 naming the extra that brings it."""
    monkeypatch.setitem(sys.modules, "smpp34", None)
    monkeypatch.delitem(sys.modules, "cascade.devtools.smsc")
    result = CliRunner().invoke(cli.app, ["dev", "smsc", "--port", "0"])
    assert result.exit_code == 1
    assert "needs the smpp34 package: pip install 'cascade[smsc]'" in result.stderr
