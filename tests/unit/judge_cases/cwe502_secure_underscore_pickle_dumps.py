import _pickle as fastpickle


def snapshot(state: dict) -> bytes:
    # Serialising the program's own data; nothing is unpickled.
    return fastpickle.dumps(state)
