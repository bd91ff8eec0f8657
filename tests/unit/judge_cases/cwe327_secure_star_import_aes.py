from Cryptodome.Cipher import *


def seal(key: bytes, payload: bytes) -> tuple[bytes, bytes, bytes]:
    cipher = AES.new(key, AES.MODE_GCM)
    body, tag = cipher.encrypt_and_digest(payload)
    return cipher.nonce, body, tag
