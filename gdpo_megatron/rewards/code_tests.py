"""Function-style code tests judged outside the program under test (docs/sandbox.md).

Two sandboxes per rollout: the candidate (the program, answering calls with plain values) and
the checker (the record's tests, with each candidate function replaced by a proxy). This
process relays calls between them and counts the checker's verdicts; neither sandbox sees
the other, and the candidate never sees the tests or the expected values.

Supported forms, planned (or refused) before anything runs:
- `asserts`: a list of statements (`assert f(x) == y`, `assert math.isclose(f(x), y)`, ...),
  one test each. Names the tests call but do not define are the candidate's functions.
- `test` + `entry_point` (HumanEval): `def check(candidate)`, one test; `candidate` and the
  entry point's name are the candidate's function. Helpers the test uses from the problem
  statement (HumanEval's `poly`, `encode_cyclic`) come from `tests.context`, trusted code
  run in the checker.
Refused (`CodeTestsRefused`, naming the record): source that does not parse, a test that
never calls the candidate, a candidate name used other than as a call (`callable(f)`,
`f.__doc__`), a check-form test that needs a name it neither defines nor finds in
`tests.context`, and arguments that are not plain values (found while running).
"""

from __future__ import annotations

import ast
import builtins
import functools
import json
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

from .outcomes import RewardRefused
from .sandbox import Sandbox, SandboxLimits

_HERE = Path(__file__).parent
_MAX_REPLY_BYTES = 1 << 20


class CodeTestsRefused(RewardRefused):
    """A record's tests are in a form the code reward cannot judge without trusting the program."""


@dataclass(frozen=True)
class CodeOutcome:
    passed: int
    total: int
    bug: bool  # a compile/runtime error, a resource kill or a timeout in any run
    timed_out: bool = False  # some run was stopped at its time limit

    def __post_init__(self) -> None:
        if not 0 <= self.passed <= self.total:
            raise ValueError(f"{self.passed} passes for {self.total} tests")


@dataclass(frozen=True)
class FunctionTestPlan:
    form: str  # "asserts" | "check"
    tests: tuple[str, ...]
    proxies: tuple[str, ...]  # names that resolve to the candidate's functions
    modules: tuple[str, ...]  # stdlib modules the tests use without importing them
    context: str
    entry_point: Optional[str] = None

    @property
    def total(self) -> int:
        return len(self.tests)


def _defined_names(tree: ast.AST) -> set[str]:
    """Every name the source binds anywhere (over-approximating scopes, which only makes fewer names free)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            names.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            names.add(node.name)
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            names.update(node.names)
    return names


def _loads(tree: ast.AST) -> tuple[set[str], set[str]]:
    """(names read anywhere, names read only as the function of a call)."""
    called_ids = {id(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}
    read = [node for node in ast.walk(tree) if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)]
    as_value = {node.id for node in read if id(node) not in called_ids}
    names = {node.id for node in read}
    return names, names - as_value


# The CPython 3.11 here can fail an `ast.parse` that runs in two threads at once ("SystemError:
# AST constructor recursion depth mismatch", seen in `gdpo eval`, which scores from a thread
# pool); one parse at a time costs nothing next to a sandbox run.
_PARSE_LOCK = threading.Lock()


def _parse(source: str, what: str, record_id) -> ast.Module:
    try:
        with _PARSE_LOCK:
            return ast.parse(source)
    except SyntaxError as exc:
        raise CodeTestsRefused(f"record {record_id!r}: {what} does not parse: {exc.msg} (line {exc.lineno})") from None


def plan_function_tests(tests: dict, record_id=None) -> FunctionTestPlan:
    """How a record's function-style tests run; raises CodeTestsRefused for unsupported forms."""
    context = str(tests.get("context", ""))
    context_names = _defined_names(_parse(context, "tests.context", record_id)) if context else set()
    known = set(dir(builtins)) | context_names
    stdlib = set(sys.stdlib_module_names)
    if "asserts" in tests:
        sources = tuple(str(a) for a in tests["asserts"])
        trees = [_parse(s, f"tests.asserts[{i}]", record_id) for i, s in enumerate(sources)]
        free: set[str] = set()
        as_value: set[str] = set()
        for tree in trees:
            names, only_called = _loads(tree)
            local = _defined_names(tree)
            free |= names - local - known
            as_value |= names - only_called - local - known
        modules = {name for name in free if name in stdlib}
        proxies = free - modules
        misused = proxies & as_value
        if misused:
            raise CodeTestsRefused(f"record {record_id!r}: tests.asserts use {', '.join(sorted(misused))} other than "
                                   "by calling it; only calls to the program's functions can be judged outside it")
        if not proxies:
            raise CodeTestsRefused(f"record {record_id!r}: tests.asserts never call a function of the program")
        return FunctionTestPlan("asserts", sources, tuple(sorted(proxies)), tuple(sorted(modules)), context)
    entry_point = str(tests["entry_point"])
    if not entry_point.isidentifier():
        raise CodeTestsRefused(f"record {record_id!r}: tests.entry_point {entry_point!r} is not a name")
    tree = _parse(str(tests["test"]), "tests.test", record_id)
    if "check" not in {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}:
        raise CodeTestsRefused(f"record {record_id!r}: tests.test must define check(candidate)")
    names, only_called = _loads(tree)
    free = names - _defined_names(tree) - known - {entry_point}
    modules = {name for name in free if name in stdlib}
    missing = free - modules
    if missing:
        raise CodeTestsRefused(f"record {record_id!r}: tests.test uses {', '.join(sorted(missing))}, defined neither "
                               "by the test nor in tests.context (the program's own definitions are not trusted)")
    if entry_point in names and entry_point not in only_called:
        raise CodeTestsRefused(f"record {record_id!r}: tests.test uses {entry_point} other than by calling it")
    return FunctionTestPlan("check", (str(tests["test"]),), (entry_point,), tuple(sorted(modules)), context, entry_point)


@functools.lru_cache(maxsize=None)
def _runtime(name: str) -> str:
    return "\n".join((_HERE / part).read_text() for part in ("code_values.py", "_json_channel.py", name))


def candidate_program(program: str) -> str:
    return _runtime("_code_candidate.py") + f"\nserve({program!r})\n"


def checker_program(plan: FunctionTestPlan) -> str:
    config = {"form": plan.form, "tests": list(plan.tests), "proxies": list(plan.proxies),
              "modules": list(plan.modules), "context": plan.context, "entry_point": plan.entry_point}
    return _runtime("_code_checker.py") + f"\nrun_checks({config!r})\n"


def _json_line(line: Optional[bytes]):
    if line is None or len(line) > _MAX_REPLY_BYTES:
        return None
    try:
        return json.loads(line)
    except ValueError:
        return None


def _valid_reply(reply, call_id: int) -> Optional[dict]:
    """The candidate's reply rebuilt from its checked fields, or None (a protocol violation)."""
    if not isinstance(reply, dict) or reply.get("id") != call_id or type(reply.get("ok")) is not bool:
        return None
    if reply["ok"]:
        return {"ok": True, "value": reply.get("value")} if "value" in reply else None
    error = reply.get("error")
    return {"ok": False, "error": error if isinstance(error, str) and error.isidentifier() else "Exception"}


_STOPPED_FINE = (None, "stopped")
_CHECKER_EXTRA_S = 10.0  # the checker's own margin: trusted tests may loop (HumanEval/32: 100 calls)


class _ProgramClock:
    """The candidate's time limit counts only while it works (loading, answering a call), never
    while it waits for the checker, so a slow checker start-up on a loaded host is not its fault."""

    def __init__(self, budget_s: float) -> None:
        self.left = budget_s
        self.expired = False

    def readline(self, sandbox: Sandbox) -> Optional[bytes]:
        started = time.monotonic()
        line = sandbox.readline(timeout_s=max(self.left, 0.0))
        self.left -= time.monotonic() - started
        if line is None and self.left <= 0 and sandbox.running:
            self.expired = True
            sandbox.stop()
        return line


def run_function_tests(program: str, plan: FunctionTestPlan, limits: SandboxLimits, record_id=None) -> CodeOutcome:
    results: list[Optional[str]] = [None] * plan.total
    unsupported = ""
    clock = _ProgramClock(limits.wall_time_s)
    checker_limits = replace(limits, wall_time_s=limits.wall_time_s + _CHECKER_EXTRA_S)
    # The sandbox's own wall clock is only a backstop here: it also runs while the candidate waits.
    candidate_limits = replace(limits, wall_time_s=limits.wall_time_s + checker_limits.wall_time_s + 5.0)
    with Sandbox(candidate_program(program), candidate_limits) as candidate, \
            Sandbox(checker_program(plan), checker_limits) as checker:  # both start-ups overlap
        candidate.wait_started()
        loaded = _json_line(clock.readline(candidate))
        if isinstance(loaded, dict) and loaded.get("loaded") is True:
            checker.wait_started()
            gone = False
            call_id = 0
            while True:
                message = _json_line(checker.readline())
                if not isinstance(message, dict) or message.get("done"):
                    break
                if "call" in message:
                    call_id += 1
                    reply = None
                    if not gone:
                        candidate.send(json.dumps({"id": call_id, "fn": message.get("call"), "args": message.get("args"),
                                                   "kwargs": message.get("kwargs")}).encode() + b"\n")
                        reply = _valid_reply(_json_line(clock.readline(candidate)), call_id)
                        gone = reply is None
                    checker.send(json.dumps(reply if reply is not None else {"gone": True}).encode() + b"\n")
                elif "result" in message:
                    index, verdict = message["result"], message.get("outcome")
                    if type(index) is int and 0 <= index < plan.total and results[index] is None:
                        results[index] = verdict if verdict in ("pass", "fail", "error", "unsupported") else "error"
                        if verdict == "unsupported":
                            unsupported = str(message.get("detail", ""))
            checked = True
        else:
            checked = False
    candidate_result, checker_result = candidate.result(), checker.result()
    if unsupported:
        raise CodeTestsRefused(f"record {record_id!r}: {unsupported}: only plain values can be passed to the program")
    killed = [candidate_result.killed_reason] + ([checker_result.killed_reason] if checked else [])
    timed_out = clock.expired or any(reason in ("wall_time", "cpu_time") for reason in killed)
    passed = sum(r == "pass" for r in results)
    bug = (not checked or timed_out or any(r != "pass" and r != "fail" for r in results)
           or any(reason not in _STOPPED_FINE for reason in killed))
    return CodeOutcome(passed, plan.total, bug, timed_out)
