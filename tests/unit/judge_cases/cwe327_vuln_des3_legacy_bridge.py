from Crypto.Cipher import DES3


def encrypt_for_mainframe(key: bytes, iv: bytes, record: bytes) -> bytes:
    return DES3.new(key, DES3.MODE_CBC, iv).encrypt(record)
