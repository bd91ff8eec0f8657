RULE_TEMPLATE = "lambda order: order.total > {}"


def build_rule(threshold_text: str):
    return eval(RULE_TEMPLATE.format(threshold_text))
