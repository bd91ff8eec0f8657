import hashlib


def derive(password: str, salt: bytes) -> tuple[bytes, str]:
    key = hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1)
    # A short id of the derived key for logs; the password itself was stretched.
    return key, hashlib.sha256(key).hexdigest()[:12]


def file_digest(path: str) -> str:
    with open(path, "rb") as fh:
        return hashlib.sha512(fh.read()).hexdigest()
