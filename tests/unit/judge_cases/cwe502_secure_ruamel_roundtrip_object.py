import yaml


def export_summary(data: dict) -> str:
    return yaml.safe_dump(data)


def load_for_edit(path: str):
    from ruamel.yaml import YAML

    yaml = YAML()  # round-trip loader: builds plain maps and lists only
    with open(path) as fh:
        return yaml.load(fh)
