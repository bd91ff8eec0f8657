import subprocess

CONVERTERS = {"pdf": "/usr/bin/pdftotext", "doc": "/usr/bin/antiword"}


def extract_text(kind: str, path: str) -> str:
    if kind not in CONVERTERS:
        raise ValueError(kind)
    return subprocess.run([CONVERTERS[kind], path], capture_output=True, text=True).stdout


def run_checked(argv: list[str]) -> None:
    # A wrapper: its callers choose argv, this function adds nothing.
    subprocess.run(argv, check=True)
