# SPDX-License-Identifier: GPL-3.0-or-later
"""CurveZMQ on the broadcast and responding sockets (docs/security.md): only clients with an
authorized key receive broadcasts and answers; real sockets on 127.0.0.1, a real monitor."""

import os
import pathlib
import shutil
import time

import pytest
import zmq
import zmq.auth
from helpers import (Process, configure_stream, eventually, free_port, monitor_command,
                     simulator_mode_command)

from om.graphical_interfaces.subscriber import RequestClient, Subscriber
from om.lib.broadcast import DataBroadcaster
from om.lib.curve import (SECRET_KEY_VARIABLE, SERVER_KEY_VARIABLE, CurveServer, client_options,
                          client_options_from_environment)
from om.lib.exceptions import OmConfigurationError
from om.lib.responding_socket import RespondingSocket


@pytest.fixture
def keys(tmp_path) -> pathlib.Path:
    """keys/: monitor, gui (authorized: its public key in keys/authorized/) and stranger key
    pairs, secret files mode 600."""
    folder = tmp_path / "keys"
    folder.mkdir()
    for name in ("monitor", "gui", "stranger"):
        zmq.auth.create_certificates(str(folder), name)
        os.chmod(folder / f"{name}.key_secret", 0o600)
    (folder / "authorized").mkdir()
    shutil.copy(folder / "gui.key", folder / "authorized" / "gui.key")
    return folder


def _client(keys: pathlib.Path, name: str) -> dict:
    return client_options(secret_key_file=keys / f"{name}.key_secret",
                          server_key_file=keys / "monitor.key")


def _plain_sub(url: str) -> zmq.Socket:
    socket = zmq.Context.instance().socket(zmq.SUB)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.SUBSCRIBE, b"")
    socket.connect(url)
    return socket


def test_only_authorized_clients_get_broadcasts_and_answers(keys):
    server = CurveServer(secret_key_file=keys / "monitor.key_secret",
                         authorized_keys_directory=keys / "authorized")
    broadcaster = DataBroadcaster(url=f"tcp://127.0.0.1:{free_port()}", options=server.options())
    responder = RespondingSocket(url=f"tcp://127.0.0.1:{free_port()}",
                                 handlers={b"resetplots": lambda identity: b"ok"},
                                 options=server.options())
    accept = {"omdata": lambda payload: payload}  # any map: these are test messages
    gui = Subscriber(broadcaster.url, accept, socket_options=_client(keys, "gui"))
    stranger = Subscriber(broadcaster.url, accept, socket_options=_client(keys, "stranger"))
    plain = _plain_sub(broadcaster.url)
    try:
        gui.start()
        stranger.start()
        # Broadcast until the authorized GUI has three messages (bounded).
        deadline = time.monotonic() + 30
        number = 0
        while gui.num_received("omdata") < 3:
            assert time.monotonic() < deadline, "the authorized GUI got no broadcast"
            number += 1
            broadcaster.send("omdata", {"num_events": number})
            time.sleep(0.05)
        assert stranger.num_received("omdata") == 0
        assert not plain.poll(0)
        # Requests: answered for the authorized key, never for the others.
        authorized = RequestClient(timeout=20, socket_options=_client(keys, "gui"))
        other = RequestClient(timeout=20, socket_options=_client(keys, "stranger"))
        authorized.send(responder.url, b"resetplots")
        other.send(responder.url, b"resetplots")
        deadline = time.monotonic() + 30
        result = None
        while result is None:
            assert time.monotonic() < deadline, "the authorized client got no answer"
            responder.serve(100)
            result = authorized.poll()
        assert result.reply == b"ok"
        assert other.poll() is None  # no answer: the handshake was refused
        for client in (authorized, other):
            client.close()
    finally:
        plain.close(0)
        gui.stop()
        stranger.stop()
        responder.close()
        broadcaster.close()
        server.stop()


def test_unusable_keys_are_configuration_errors(keys, monkeypatch):
    os.chmod(keys / "monitor.key_secret", 0o644)
    with pytest.raises(OmConfigurationError, match="readable by others"):
        CurveServer(secret_key_file=keys / "monitor.key_secret",
                    authorized_keys_directory=keys / "authorized")
    os.chmod(keys / "monitor.key_secret", 0o600)
    with pytest.raises(OmConfigurationError, match="holds no secret key"):
        CurveServer(secret_key_file=keys / "monitor.key",
                    authorized_keys_directory=keys / "authorized")
    with pytest.raises(OmConfigurationError, match="not a folder"):
        CurveServer(secret_key_file=keys / "monitor.key_secret",
                    authorized_keys_directory=keys / "missing")
    monkeypatch.setenv(SECRET_KEY_VARIABLE, str(keys / "gui.key_secret"))
    monkeypatch.delenv(SERVER_KEY_VARIABLE, raising=False)
    with pytest.raises(OmConfigurationError, match=SERVER_KEY_VARIABLE):
        client_options_from_environment()
    monkeypatch.setenv(SERVER_KEY_VARIABLE, str(keys / "monitor.key"))
    assert zmq.CURVE_SERVERKEY in client_options_from_environment()


@pytest.mark.slow
def test_a_monitor_with_curve_keys_broadcasts_to_authorized_guis_only(tmp_path, keys,
                                                                      monkeypatch):
    config, broadcast = configure_stream(
        tmp_path, "StreamingReceiverDataRetrieval",
        curve_secret_key_file=str(keys / "monitor.key_secret"),
        curve_authorized_keys_directory=str(keys / "authorized"))
    url = f"tcp://127.0.0.1:{free_port()}"
    sender = Process(simulator_mode_command("streaming-receiver", "--url", url, "--frames",
                                            "60", "--rate", "20", "--wait-for-clients", "2",
                                            "--wait-timeout", "180"), tmp_path, "sender")
    monitor = Process(monitor_command(url, config), tmp_path, "monitor")
    # A GUI takes its keys from the environment.
    monkeypatch.setenv(SECRET_KEY_VARIABLE, str(keys / "gui.key_secret"))
    monkeypatch.setenv(SERVER_KEY_VARIABLE, str(keys / "monitor.key"))
    gui = Subscriber(broadcast)
    plain = _plain_sub(broadcast)
    try:
        gui.start()
        assert eventually(lambda: gui.num_received("omdata") >= 2
                          or monitor.popen.poll() is not None, timeout=180), monitor.stderr
        assert gui.num_received("omdata") >= 2, monitor.stderr[-3000:]
        assert not plain.poll(0)
        assert sender.wait(180) == 0  # every frame sent before the monitor stops
    finally:
        plain.close(0)
        gui.stop()
        code = monitor.stop()
        sender.stop()
    assert code == 0, monitor.stderr[-3000:]
