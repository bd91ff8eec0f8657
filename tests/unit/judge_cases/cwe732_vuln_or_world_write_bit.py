import os
import stat


def share_drop_folder(path: str) -> None:
    current = os.stat(path).st_mode
    os.chmod(path, current | stat.S_IWOTH)
