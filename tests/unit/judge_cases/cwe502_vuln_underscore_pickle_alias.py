import _pickle as fastpickle


def restore_session(cache, session_id: str):
    blob = cache.get("session:" + session_id)
    return fastpickle.loads(blob)
