import tarfile


def restore_backup(archive: str, target: str) -> None:
    with tarfile.open(archive) as backup:
        backup.extractall(target, members=backup.getmembers())
