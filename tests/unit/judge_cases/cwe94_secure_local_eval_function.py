import ast


def eval(expression: str):
    """Project-wide safe evaluator: literals only."""
    return ast.literal_eval(expression)


def parse_setting(raw_value: str):
    return eval(raw_value)
