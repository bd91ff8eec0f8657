import socket

from OpenSSL import SSL


def open_feed(host: str) -> SSL.Connection:
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    conn = SSL.Connection(ctx, socket.create_connection((host, 443)))
    conn.set_connect_state()
    conn.do_handshake()
    return conn
