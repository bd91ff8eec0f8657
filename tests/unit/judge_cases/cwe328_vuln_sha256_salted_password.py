import hashlib
import os


def register(db, username: str, password: str) -> None:
    salt = os.urandom(16)
    digest = hashlib.sha256(salt + password.encode()).hexdigest()
    db.insert("users", username=username, salt=salt.hex(), pw=digest)
