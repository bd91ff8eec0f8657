def scale(reading: str) -> float:
    # Starts as a constant, but the caller's text is appended before eval.
    formula = "0.5 * "
    formula += reading
    return eval(formula)
