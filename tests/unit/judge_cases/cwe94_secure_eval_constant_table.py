# eval/exec of text fixed in the source: nothing from outside reaches them.
BUFFER_EXPR = "4 * 1024 * 1024"


def default_buffer_size() -> int:
    return eval(BUFFER_EXPR)


def warm_up() -> None:
    banner = "print('cache warmed')"
    exec(banner)
    exec(f"import json")


def seconds_per_day() -> int:
    return eval("24 * 60 * 60")
