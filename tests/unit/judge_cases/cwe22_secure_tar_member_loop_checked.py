import tarfile


def install_theme(bundle_path: str, themes_dir: str) -> int:
    count = 0
    with tarfile.open(bundle_path, "r:gz") as bundle:
        for item in bundle.getmembers():
            if item.name.startswith("/") or ".." in item.name.split("/"):
                continue
            bundle.extract(item, themes_dir)
            count += 1
    return count
