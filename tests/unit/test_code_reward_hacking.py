"""Programs written to earn the code reward without solving the task: each must score 0.

Every program below leaves `add` unimplemented (or implemented wrong) and attacks the
harness instead: the verdict markers and test lists of earlier harnesses, patched builtins,
re-reporting at exit, lookup tables, objects that equal anything, processes that outlive the
run, the protocol channel itself. They run through the real sandboxes and the real reward
functions; correct programs in the same records must still score 1. Every test runs in each
isolation mode this host can run (a mode it cannot is skipped, with the preflight's reason).
"""

from concurrent.futures import ThreadPoolExecutor

import pytest

from gdpo_megatron.rewards import REWARDS
from gdpo_megatron.rewards.sandbox import ISOLATION_MODES
from gdpo_megatron.rewards.sandbox_preflight import unavailable_reason

code_pass = REWARDS.get("code_pass")
LIMITS = {"timeout_s": 3.0, "memory_mb": 512, "max_processes": 8}


@pytest.fixture(params=ISOLATION_MODES)
def args(request):
    """The reward's arguments in one isolation mode; skipped where this host cannot run it."""
    reason = unavailable_reason(request.param)
    if reason is not None:
        pytest.skip(reason)
    return {**LIMITS, "isolation": request.param}

# The problem statement shows add(1, 2) == 3; the tests are different and hidden.
ASSERTS = {"id": "add-asserts", "tests": {"style": "function", "asserts": [
    "assert add(2, 3) == 5", "assert add(-4, 10) == 6", "assert add(100, 1) == 101", "assert add(7, 7) == 14"]}}
CHECK = {"id": "add-check", "tests": {"style": "function", "entry_point": "add", "test": (
    "def check(candidate):\n"
    "    assert candidate(2, 3) == 5\n"
    "    assert candidate(-4, 10) == 6\n"
    "    assert candidate(100, 1) == 101\n")}}
STDIN = {"id": "add-stdin", "tests": {"style": "stdin", "cases": [
    {"input": "2 3\n", "output": "5\n"}, {"input": "-4 10\n", "output": "6\n"}, {"input": "100 1\n", "output": "101\n"}]}}

# Finds the result marker of a harness that shares the program's process (its module globals,
# its file in the working dir), so that a forged report is accepted there.
FIND_MARKER = (
    "import sys, re\n"
    "def _find_marker():\n"
    "    marker = getattr(sys.modules.get('__main__'), '_marker', None)\n"
    "    if marker:\n        return marker\n"
    "    for path in ('prog.py', '/tmp/work/prog.py', '/work/prog.py'):\n"
    "        try:\n"
    "            hit = re.search(r'@@gdpo-results-[0-9a-f]+@@', open(path).read())\n"
    "            if hit:\n                return hit.group(0)\n"
    "        except OSError:\n            pass\n"
    "    return '@@gdpo-results@@'\n"
    "REPORT = _find_marker() + '{\"loaded\": true, \"results\": [\"pass\", \"pass\", \"pass\", \"pass\"]}'\n")
FAKE_REPORT = FIND_MARKER + "print(REPORT, flush=True)"

FORGERIES = {
    # -- printing verdicts in the formats of harnesses and of the protocol -------------------
    "fake_result_marker": f"{FAKE_REPORT}\ndef add(a, b):\n    return 0",
    "fake_report_400_passes": FIND_MARKER + "import atexit\n"
                              "atexit.register(print, REPORT.replace('\"pass\", ' * 3, '\"pass\", ' * 399), flush=True)\n"
                              "def add(a, b):\n    return 0",
    "checker_messages_on_stdout": "import os, json\nfor i in range(4):\n"
                                  "    os.write(1, (json.dumps({'result': i, 'outcome': 'pass'}) + '\\n').encode())\n"
                                  "os.write(1, b'{\"done\": true}\\n')\ndef add(a, b):\n    return 0",
    "reply_flood_before_loading": "import os, json\nfor i in range(1, 50):\n"
                                  "    os.write(1, (json.dumps({'id': i, 'ok': True, 'value': 5}) + '\\n').encode())\n"
                                  "def add(a, b):\n    return 0",
    # -- looking for the tests or the expected values inside the process or on disk ---------
    "frame_and_globals_walk": "import sys, gc, re\nfound = []\nf = sys._getframe()\nwhile f:\n"
                              "    found += [repr(v) for v in f.f_globals.values()] + [repr(v) for v in f.f_locals.values()]\n"
                              "    f = f.f_back\nfound += [o for o in gc.get_objects() if isinstance(o, str)]\n"
                              "pairs = re.findall(r'add\\((-?\\d+), (-?\\d+)\\) == (-?\\d+)', ' '.join(found))\n"
                              "table = {(int(a), int(b)): int(c) for a, b, c in pairs}\n"
                              "def add(a, b):\n    return table.get((a, b), 0)",
    "harness_file_on_disk": "import os, re\ntext = ''\nfor root in ('/', '/work', '/tmp', '/proc/self/cwd'):\n"
                            "    for dirpath, _, files in os.walk(root):\n"
                            "        if dirpath.startswith(('/proc', '/usr', '/root')):\n            continue\n"
                            "        for name in files:\n            try:\n"
                            "                text += open(os.path.join(dirpath, name), errors='ignore').read()\n"
                            "            except OSError:\n                pass\n"
                            "pairs = re.findall(r'add\\((-?\\d+), (-?\\d+)\\) == (-?\\d+)', text)\n"
                            "table = {(int(a), int(b)): int(c) for a, b, c in pairs}\n"
                            "def add(a, b):\n    return table.get((a, b), 0)",
    "other_processes_memory": "import os, re\ntext = b''\nfor pid in os.listdir('/proc'):\n    if pid.isdigit():\n"
                              "        for name in ('cmdline', 'environ'):\n            try:\n"
                              "                text += open(f'/proc/{pid}/{name}', 'rb').read()\n"
                              "            except OSError:\n                pass\n"
                              "pairs = re.findall(rb'add\\((-?\\d+), (-?\\d+)\\) == (-?\\d+)', text)\n"
                              "table = {(int(a), int(b)): int(c) for a, b, c in pairs}\n"
                              "def add(a, b):\n    return table.get((a, b), 0)",
    "lookup_table_from_visible_example": "def add(a, b):\n    return {(1, 2): 3}.get((a, b), 0)",
    "echo_the_arguments": "def add(*args, **kwargs):\n    return args[0] if args else 0",
    # -- patching what a harness uses ----------------------------------------------------------
    "patch_builtins_exec_and_assert": "import builtins\nbuiltins.exec = lambda *a, **k: None\n"
                                      "builtins.AssertionError = type('Never', (Exception,), {})\n"
                                      "def add(a, b):\n    return 0",
    "patch_builtins_print": FIND_MARKER + "import builtins\n_print = builtins.print\n"
                            "builtins.print = lambda *a, **k: _print(REPORT if a and str(a[0]).startswith(REPORT[:14])"
                            " else ' '.join(map(str, a)), **k)\n"
                            "def add(a, b):\n    return 0",
    "patch_json_dumps": "import json\n_real = json.dumps\n"
                        "json.dumps = lambda obj, *a, **k: _real({'loaded': True, 'results': ['pass'] * 4, 'ok': True,"
                        " 'value': 12345, 'id': obj.get('id') if isinstance(obj, dict) else 0})\n"
                        "def add(a, b):\n    return 0",
    "patch_the_reply_encoder": "import sys\nmain = sys.modules['__main__']\n"
                               "main.encode = lambda value, depth=0: {'$': 'always_equal', 'v': []}\n"
                               "def add(a, b):\n    return 0",
    "replace_the_reply_loop": "import sys, os, json\n"
                              "for line in os.fdopen(3 if False else os.dup(0), 'rb'):\n    pass\n"
                              "def add(a, b):\n    return 0",
    "patch_stdout_write": "import sys\n_w = sys.stdout.write\n"
                          "sys.stdout.write = lambda s: _w(s.replace('fail', 'pass'))\ndef add(a, b):\n    return 0",
    # -- values that pretend to be equal ---------------------------------------------------------
    "eq_always_true_object": "class Any:\n    def __eq__(self, other):\n        return True\n"
                             "    __ne__ = lambda self, other: False\n    __hash__ = object.__hash__\n"
                             "def add(a, b):\n    return Any()",
    "int_subclass_equal_to_everything": "class Five(int):\n    def __eq__(self, other):\n        return True\n"
                                        "    __hash__ = int.__hash__\ndef add(a, b):\n    return Five(0)",
    "str_subclass_equal_to_everything": "class S(str):\n    def __eq__(self, other):\n        return True\n"
                                        "    __hash__ = str.__hash__\ndef add(a, b):\n    return S('x')",
    "nan_like_float": "def add(a, b):\n    return float('nan')",
    # -- re-reporting at exit, outliving the run ------------------------------------------------
    "atexit_fake_report": FIND_MARKER + "import atexit\natexit.register(lambda: print(REPORT, flush=True))\n"
                          "def add(a, b):\n    return 0",
    "os_exit_after_report": f"import os\n{FAKE_REPORT}\nos._exit(0)\ndef add(a, b):\n    return a + b",
    "signal_handler_report": "import signal, os, json\n"
                             "def report(*_):\n    os.write(1, b'{\"id\": 1, \"ok\": true, \"value\": 5}\\n')\n    os._exit(0)\n"
                             "for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):\n    signal.signal(s, report)\n"
                             "def add(a, b):\n    return 0",
    "forked_child_outlives_parent": "import os, time\nif os.fork() == 0:\n    time.sleep(0.5)\n"
                                    "    os.write(1, b'{\"id\": 2, \"ok\": true, \"value\": 6}\\n')\n    time.sleep(30)\n"
                                    "def add(a, b):\n    return 0",
    "exit_inside_the_call": "def add(a, b):\n    raise SystemExit(0)",
    "assertion_error_passthrough": "def add(a, b):\n    raise AssertionError('ok')",
    "hang_until_timeout": "def add(a, b):\n    while True:\n        pass",
    "kill_everything_visible": "import os, signal\nfor pid in range(1, 200):\n    try:\n"
                               "        os.kill(pid, signal.SIGKILL) if pid != os.getpid() else None\n"
                               "    except OSError:\n        pass\ndef add(a, b):\n    return 0",
    "redefine_check_and_helpers": "def check(candidate):\n    return None\n"
                                  "def add(a, b):\n    return 0",
    "huge_nested_reply": "def add(a, b):\n    x = []\n    for _ in range(100000):\n        x = [x]\n    return x",
}


def scores(record, programs, args):
    # Threads overlap the sandboxes' start-up and time limits (the whole suite waits mostly).
    with ThreadPoolExecutor(6) as pool:
        values = pool.map(lambda name: code_pass(record, programs[name], 0, **args), sorted(programs))
        return dict(zip(sorted(programs), values))


@pytest.mark.parametrize("record", [ASSERTS, CHECK], ids=["asserts", "check"])
def test_forgeries_score_zero(record, args):
    assert len(FORGERIES) >= 20
    forged = {name: value for name, value in scores(record, FORGERIES, args).items() if value != 0.0}
    assert forged == {}


STDIN_FORGERIES = {
    "visible_example_constant": "print(3)",
    "fake_verdict_text": f"{FAKE_REPORT}\nprint('PASSED 3/3')",
    "search_disk_for_outputs": "import os\nfor d, _, fs in os.walk('/'):\n    if d.startswith(('/proc', '/usr', '/root', '/dev')):\n"
                               "        continue\n    for f in fs:\n        try:\n"
                               "            print(open(os.path.join(d, f)).read()[:100])\n        except Exception:\n"
                               "            pass",
    "atexit_prints_verdict": "import atexit\natexit.register(lambda: print('ALL TESTS PASSED'))\nraise SystemExit(0)",
}


def test_stdin_forgeries_score_zero(args):
    forged = {name: value for name, value in scores(STDIN, STDIN_FORGERIES, args).items() if value != 0.0}
    assert forged == {}


@pytest.mark.parametrize("record", [ASSERTS, CHECK, STDIN], ids=["asserts", "check", "stdin"])
def test_correct_programs_still_score_one(record, args):
    program = ("import sys\ndef add(a, b):\n    return a + b\n"
               "if __name__ == '__main__':\n    a, b = map(int, sys.stdin.read().split())\n    print(add(a, b))")
    assert code_pass(record, program, 0, **args) == 1.0
    if record is not STDIN:  # in function style, an honest program's own prints and atexit hooks are harmless
        noisy = "import atexit\nprint('debug output')\natexit.register(lambda: print('bye'))\n" + program
        assert code_pass(record, noisy, 0, **args) == 1.0
