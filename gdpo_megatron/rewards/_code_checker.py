"""Runs inside the checker's sandbox (after code_values.py's and _json_channel.py's source): the tests, written as code,
with every function of the candidate replaced by a proxy. The candidate's code never runs
here; a proxy call sends the arguments out and gets back a decoded plain value (or an
exception), so the verdict of each test is computed away from the program it judges.

Out (stdout): {"call": name, "args": [...], "kwargs": {...}}, then reads one reply line
{"ok": true, "value": v} | {"ok": false, "error": name} | {"gone": true}; results are
{"result": index, "outcome": "pass" | "fail" | "error" | "unsupported", "detail": str},
then {"done": true}. The test's own prints go to stderr.
"""


def run_checks(config):
    import builtins
    import json
    import sys
    import traceback

    replies, send = open_channel()  # noqa: F821 - prepended from _json_channel.py

    class CandidateGone(BaseException):
        """The candidate process ended or broke the protocol: no test can pass after this."""

    class Unsupported(BaseException):
        """The test passes something that is not a plain value: this form is not supported."""

    class CandidateError(Exception):
        """The candidate raised an exception that is not a builtin one."""

    passthrough = {name for name in dir(builtins) if isinstance(getattr(builtins, name), type)
                   and issubclass(getattr(builtins, name), Exception)
                   and name not in ("StopIteration", "StopAsyncIteration")}
    state = {"gone": False}

    class Proxy:
        def __init__(self, name):
            self.__name__ = name

        def __call__(self, *args, **kwargs):
            if state["gone"]:
                raise CandidateGone()
            try:
                message = {"call": self.__name__, "args": encode(list(args)),  # noqa: F821
                           "kwargs": encode(dict(kwargs))}  # noqa: F821
            except (TypeError, ValueError) as exc:
                raise Unsupported(f"argument of {self.__name__}(): {exc}") from None
            send(message)
            reply = json.loads(replies.readline() or b'{"gone": true}')
            if reply.get("gone"):
                state["gone"] = True
                raise CandidateGone()
            if reply["ok"]:
                try:
                    return decode(reply["value"])  # noqa: F821
                except (TypeError, ValueError, RecursionError):
                    raise CandidateError("malformed return value") from None
            error = reply.get("error")
            raise (getattr(builtins, error) if error in passthrough else CandidateError)(f"raised by {self.__name__}")

    namespace = {"__name__": "__test__", "__builtins__": builtins}
    for module in config["modules"]:
        namespace[module] = __import__(module)
    if config["context"]:
        exec(compile(config["context"], "context.py", "exec"), namespace)
    for name in config["proxies"]:
        namespace[name] = Proxy(name)

    def outcome(run):
        try:
            run()
            return "pass", ""
        except AssertionError:
            return "fail", ""
        except CandidateGone:
            return "error", "the program ended or broke the protocol"
        except Unsupported as exc:
            return "unsupported", str(exc)
        except BaseException as exc:  # noqa: BLE001 - the test's verdict is "error"
            traceback.print_exc()
            return "error", type(exc).__name__

    if config["form"] == "asserts":
        for index, source in enumerate(config["tests"]):
            code = compile(source, f"assert_{index}.py", "exec")
            result, detail = outcome(lambda: exec(code, namespace))
            send({"result": index, "outcome": result, "detail": detail})
    else:
        exec(compile(config["tests"][0], "test.py", "exec"), namespace)
        result, detail = outcome(lambda: namespace["check"](namespace[config["entry_point"]]))
        send({"result": 0, "outcome": result, "detail": detail})
    send({"done": True})
    sys.stdout.flush()
