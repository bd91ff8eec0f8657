import ssl
import urllib.request

# Every later urlopen() skips certificate checks.
ssl._create_default_https_context = ssl._create_unverified_context


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url) as resp:
        return resp.read()
