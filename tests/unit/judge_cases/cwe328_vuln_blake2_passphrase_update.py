import hashlib


def vault_key_check(passphrase: str) -> str:
    h = hashlib.blake2b()
    h.update(passphrase.encode("utf-8"))
    return h.hexdigest()
