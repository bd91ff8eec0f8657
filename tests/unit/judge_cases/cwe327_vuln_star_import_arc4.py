from Cryptodome.Cipher import *


def obfuscate_frame(session_key: bytes, frame: bytes) -> bytes:
    return ARC4.new(session_key).encrypt(frame)
