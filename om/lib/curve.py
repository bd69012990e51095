# SPDX-License-Identifier: GPL-3.0-or-later
"""CurveZMQ for the collecting rank's bound sockets and for their clients (optional).

CurveZMQ (http://curvezmq.org, libzmq's ``ZMQ_CURVE`` mechanism) encrypts a connection and lets
the server accept only clients whose public key it knows. Keys are pyzmq's certificate files
(``zmq.auth.create_certificates(folder, name)`` writes ``name.key`` with the public key and
``name.key_secret`` with both; ``zmq.auth.load_certificate`` reads them). The server side
(:class:`CurveServer`) needs its secret key file and a folder of the authorized clients'
public key files, checked by pyzmq's authenticator (``zmq.auth.thread.ThreadAuthenticator``, the
ZAP handler of the process's ZeroMQ context). A client needs its own secret key file and the
server's public key file (:func:`client_options`); the GUIs take both from the environment
(:func:`client_options_from_environment`).
"""

import os
import pathlib
import stat
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from om.lib.exceptions import OmConfigurationError

__all__ = ["CurveServer", "client_options", "client_options_from_environment"]


def _secret_key_pair(filename: str | os.PathLike, what: str) -> tuple[bytes, bytes]:
    """(public, secret) Z85 keys of a ``.key_secret`` certificate file that only its owner may
    read.

    Raises:
        OmConfigurationError: when the file is missing, readable by others, or has no secret key.
    """
    path = pathlib.Path(filename)
    try:
        mode = path.stat().st_mode
        public, secret = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as error:
        raise OmConfigurationError(f"{what} {str(path)!r}: cannot be read: {error}")
    if not secret:
        raise OmConfigurationError(f"{what} {str(path)!r}: holds no secret key (a .key_secret "
                                   f"file of zmq.auth.create_certificates is needed)")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise OmConfigurationError(f"{what} {str(path)!r}: readable by others (mode "
                                   f"{stat.S_IMODE(mode):o}): allow its owner only (chmod 600)")
    return public, secret


class CurveServer:
    """The server keys and the client check of CurveZMQ for the sockets one process binds.

    Args:
        secret_key_file: the server's ``.key_secret`` certificate file (mode 600).
        authorized_keys_directory: a folder of the authorized clients' public ``.key`` files.

    Raises:
        OmConfigurationError: when a file or the folder cannot be used.
    """

    def __init__(self, *, secret_key_file: str | os.PathLike,
                 authorized_keys_directory: str | os.PathLike) -> None:
        self._public, self._secret = _secret_key_pair(secret_key_file, "CURVE secret key file")
        folder = pathlib.Path(authorized_keys_directory)
        if not folder.is_dir():
            raise OmConfigurationError(f"CURVE authorized keys folder {str(folder)!r}: not a "
                                       f"folder")
        self._authenticator = ThreadAuthenticator(zmq.Context.instance())
        self._authenticator.start()
        self._authenticator.configure_curve(domain="*", location=str(folder))

    def options(self) -> dict[int, Any]:
        """Socket options that make a socket a CURVE server (set before ``bind``)."""
        return {zmq.CURVE_SERVER: 1, zmq.CURVE_PUBLICKEY: self._public,
                zmq.CURVE_SECRETKEY: self._secret}

    def stop(self) -> None:
        """Stops the authenticator thread."""
        self._authenticator.stop()


def client_options(*, secret_key_file: str | os.PathLike,
                   server_key_file: str | os.PathLike) -> dict[int, Any]:
    """Socket options of a CURVE client (set before ``connect``).

    Args:
        secret_key_file: the client's ``.key_secret`` certificate file (mode 600); its public
            key must be in the server's authorized keys folder.
        server_key_file: the server's public ``.key`` certificate file.

    Raises:
        OmConfigurationError: when a file cannot be used.
    """
    public, secret = _secret_key_pair(secret_key_file, "CURVE secret key file")
    try:
        server, _ = zmq.auth.load_certificate(str(server_key_file))
    except (OSError, ValueError) as error:
        raise OmConfigurationError(f"CURVE server key file {str(server_key_file)!r}: cannot be "
                                   f"read: {error}")
    return {zmq.CURVE_PUBLICKEY: public, zmq.CURVE_SECRETKEY: secret, zmq.CURVE_SERVERKEY: server}


SECRET_KEY_VARIABLE = "OM_CURVE_SECRET_KEY_FILE"
"""Environment variable: a client's ``.key_secret`` file (the GUIs read it)."""
SERVER_KEY_VARIABLE = "OM_CURVE_SERVER_KEY_FILE"
"""Environment variable: the monitor's public ``.key`` file (the GUIs read it)."""


def client_options_from_environment() -> dict[int, Any]:
    """CURVE client options from :data:`SECRET_KEY_VARIABLE` and :data:`SERVER_KEY_VARIABLE`
    (both set: a CURVE client; neither: ``{}``, a plain connection).

    Raises:
        OmConfigurationError: when only one is set, or a file cannot be used.
    """
    secret = os.environ.get(SECRET_KEY_VARIABLE)
    server = os.environ.get(SERVER_KEY_VARIABLE)
    if not secret and not server:
        return {}
    if not (secret and server):
        missing = SERVER_KEY_VARIABLE if secret else SECRET_KEY_VARIABLE
        raise OmConfigurationError(f"CURVE: {missing} is not set (set both "
                                   f"{SECRET_KEY_VARIABLE} and {SERVER_KEY_VARIABLE}, or neither)")
    return client_options(secret_key_file=secret, server_key_file=server)
