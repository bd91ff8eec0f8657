import socket
import ssl

CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def push_metrics(host: str, payload: bytes) -> None:
    raw = socket.create_connection((host, 8443))
    sock = ssl.wrap_socket(raw, cert_reqs=ssl.CERT_REQUIRED, ca_certs=CA_BUNDLE)
    sock.sendall(payload)
    sock.close()
