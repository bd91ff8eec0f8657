import socket

from OpenSSL import SSL


def open_feed(host: str, ca_file: str) -> SSL.Connection:
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_verify(SSL.VERIFY_PEER, lambda conn, cert, errno, depth, ok: bool(ok))
    ctx.load_verify_locations(ca_file)
    conn = SSL.Connection(ctx, socket.create_connection((host, 443)))
    conn.set_tlsext_host_name(host.encode())
    conn.set_connect_state()
    conn.do_handshake()
    return conn
