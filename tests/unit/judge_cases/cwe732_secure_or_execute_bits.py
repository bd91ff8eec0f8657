import os
import stat


def make_executable(script: str) -> None:
    current = os.stat(script).st_mode
    os.chmod(script, current | stat.S_IXUSR | stat.S_IXGRP)
