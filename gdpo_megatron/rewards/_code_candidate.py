"""Runs inside the candidate's sandbox (after code_values.py's and _json_channel.py's source): load the program, then
answer calls. Untrusted territory: the program may rewrite any of this, and all it can send
back is JSON on its own stdout, which a trusted process decodes and a separate checker judges.

Requests (stdin): {"id": n, "fn": name, "args": [...], "kwargs": {...}} in code_values' encoding.
Replies (stdout): {"loaded": bool} once, then {"id": n, "ok": true, "value": ...} or
{"id": n, "ok": false, "error": exception type name}. The program's own prints go to stderr.
"""


def serve(program):
    import builtins
    import json
    import sys
    import traceback

    requests, reply = open_channel()  # noqa: F821 - prepended from _json_channel.py

    namespace = {"__name__": "__solution__", "__builtins__": builtins}
    try:
        exec(compile(program, "solution.py", "exec"), namespace)
    except BaseException as exc:  # noqa: BLE001 - the program's failure is its result
        traceback.print_exc()
        reply({"loaded": False, "error": type(exc).__name__})
        sys.exit(1)
    reply({"loaded": True})
    for line in requests:
        request = json.loads(line)
        try:
            function = namespace[request["fn"]]
            args = decode(request["args"])  # noqa: F821 - prepended from code_values.py
            kwargs = decode(request["kwargs"])  # noqa: F821
            value = encode(function(*args, **kwargs))  # noqa: F821
            message = {"id": request["id"], "ok": True, "value": value}
        except BaseException as exc:  # noqa: BLE001 - a failing call is a result
            traceback.print_exc()
            message = {"id": request["id"], "ok": False, "error": type(exc).__name__}
        reply(message)
