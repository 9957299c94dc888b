"""Plain values as JSON, the only thing that crosses between the processes of a function-style test.

Self-contained (stdlib only): its source is also prepended to the programs that run in the
sandbox. `encode` accepts builtin data (None, bool, int, float, str, bytes, complex, list,
tuple, set, frozenset, dict, and their subclasses, read as the builtin); `decode` builds only
those builtins, so a value from the untrusted process can never carry behaviour (an
`__eq__` that is always true, a `__del__`, a pickle). Every JSON object is a tagged
container: {"$": "tuple" | "set" | "frozenset" | "dict" | "bytes" | "complex" | "float", "v": ...}.
"""

import math as _math

MAX_DEPTH = 100


def encode(value, depth=0):
    if depth > MAX_DEPTH:
        raise ValueError("value nested too deeply")
    if value is None or isinstance(value, bool):
        return None if value is None else bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        value = float(value)
        return value if _math.isfinite(value) else {"$": "float", "v": repr(value)}
    if isinstance(value, str):
        return str(value)
    if isinstance(value, (bytes, bytearray)):
        return {"$": "bytes", "v": bytes(value).hex()}
    if isinstance(value, complex):
        return {"$": "complex", "v": [encode(value.real), encode(value.imag)]}
    if isinstance(value, list):
        return [encode(item, depth + 1) for item in list(value)]
    if isinstance(value, tuple):
        return {"$": "tuple", "v": [encode(item, depth + 1) for item in tuple(value)]}
    if isinstance(value, (set, frozenset)):
        tag = "frozenset" if isinstance(value, frozenset) else "set"
        return {"$": tag, "v": [encode(item, depth + 1) for item in list(value)]}
    if isinstance(value, dict):
        return {"$": "dict", "v": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in list(dict.items(value))]}
    raise TypeError(f"not a plain value: {type(value).__name__}")


def decode(data, depth=0):
    if depth > MAX_DEPTH:
        raise ValueError("value nested too deeply")
    if data is None or type(data) in (bool, int, str):
        return data
    if type(data) is float:
        return data
    if type(data) is list:
        return [decode(item, depth + 1) for item in data]
    if type(data) is not dict or set(data) != {"$", "v"}:
        raise ValueError("malformed value")
    tag, body = data["$"], data["v"]
    if tag == "float" and body in ("nan", "inf", "-inf"):
        return float(body)
    if tag == "bytes" and type(body) is str:
        return bytes.fromhex(body)
    if type(body) is not list:
        raise ValueError("malformed value")
    if tag == "complex" and len(body) == 2:
        real, imag = decode(body[0], depth + 1), decode(body[1], depth + 1)
        if type(real) is float and type(imag) is float:
            return complex(real, imag)
    items = [decode(item, depth + 1) for item in body] if tag != "dict" else None
    if tag == "tuple":
        return tuple(items)
    if tag == "set":
        return set(items)
    if tag == "frozenset":
        return frozenset(items)
    if tag == "dict":
        if not all(type(pair) is list and len(pair) == 2 for pair in body):
            raise ValueError("malformed value")
        return {decode(k, depth + 1): decode(v, depth + 1) for k, v in body}
    raise ValueError(f"unknown value tag {tag!r}")
