"""Pebble-compatible ``{{ }}`` / ``{% %}`` templates, sandboxed (placeholder until the engine lands)."""


def is_truthy(rendered: object) -> bool:
    """Kestra's truthiness of a rendered condition: '', '0', '-0', 'false' (any case) are false."""
    if rendered is None:
        return False
    text = str(rendered).strip() if not isinstance(rendered, bool) else str(rendered).lower()
    return not (text == "" or text.lower() == "false" or text in ("0", "-0"))
