"""The trusted launcher of one sandbox run (stdlib only; started as `python -I -S` by sandbox.py).

Three processes, each with one job:

- guard (started by sandbox.py, host namespaces, root): dies with its caller through
  PR_SET_PDEATHSIG (SIGTERM), and on SIGTERM kills the run; creates the run's memory cgroup,
  enters fresh network, IPC and UTS namespaces, forks init into a fresh pid namespace,
  waits for it, then removes the cgroup and the staging dir. It holds the uid lease fd, so
  the lease outlives every process of the run: the kernel reaps a pid namespace's init only
  after every other process in that namespace is gone.
- init (pid 1 of the run): dies with the guard (PR_SET_PDEATHSIG, SIGKILL), enters a mount
  namespace of its own, builds the
  program's root filesystem (read-only interpreter, stdlib and the shared libraries they
  load; a size-capped tmpfs /work; /dev/null & co; a fresh /proc), pivots into it, forks the
  program and reports its wait status. When init exits, the kernel kills what is left.
- program: drops to the leased uid, then dies with init (PR_SET_PDEATHSIG, SIGKILL: armed
  after the drop, which clears it), sets rlimits and a seccomp filter against sockets,
  closes every fd but 0-2, reports
  "started" (time limits count from here, not from interpreter start-up), runs the code.

rlimits mode has no pid namespace: init leads a process group of its own, which the guard
kills on a stop request and again once init has exited, then it kills every process left
with the run's uid (children that left the group). The mode is root-only (sandbox.py).

Status lines (JSON) go to a pipe the program never holds: started, exit, done, setup_error.
"""

import ctypes
import json
import os
import resource
import shutil
import signal
import sys
import types

SETUP_FAILED = 121
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 8, 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWPID, CLONE_NEWNET = 0x20000, 0x4000000, 0x8000000, 0x20000000, 0x40000000
PR_SET_PDEATHSIG = 1
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "ppc64le": 203}
DEVICES = ("null", "zero", "full", "random", "urandom")

libc = ctypes.CDLL(None, use_errno=True)
status_fd = -1


def report(event, **fields):
    os.write(status_fd, (json.dumps({"event": event, **fields}) + "\n").encode())


def fail(message):
    try:
        report("setup_error", message=message)
    except OSError:
        pass
    os._exit(SETUP_FAILED)


def check(result, what):
    if result != 0:
        fail(f"{what}: {os.strerror(ctypes.get_errno())}")


def mount(source, target, fstype, flags, options=""):
    check(libc.mount(source.encode() if source else None, target.encode(), fstype.encode() if fstype else None,
                     flags, options.encode() if options else None), f"mount {source} on {target}")


def set_parent_death_signal(signum, parent, leftover=None):
    check(libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != parent:  # the parent died before the signal was armed
        if leftover:
            shutil.rmtree(leftover, ignore_errors=True)
        fail("the caller is gone")


# ---- guard -------------------------------------------------------------------------------

def main():
    global status_fd
    staging, caller, status_fd = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    init_pidfd = None

    def stop(signum, frame):
        if init_pidfd is None:
            os._exit(SETUP_FAILED)
        try:
            signal.pidfd_send_signal(init_pidfd, signal.SIGKILL)  # a pidfd cannot hit a reused pid
        except ProcessLookupError:
            pass
        if not namespaces:
            kill_group(pid)  # init is not reaped yet, so its pid (the group's id) cannot be reused

    signal.signal(signal.SIGTERM, stop)
    set_parent_death_signal(signal.SIGTERM, caller, leftover=staging)
    try:
        with open(os.path.join(staging, "spec.json")) as f:
            spec = json.load(f)
        with open(os.path.join(staging, "prog.py"), "rb") as f:
            program = f.read()
    except OSError as exc:
        fail(f"cannot read the staged program: {exc}")
    cgroup = spec["cgroup"]
    if cgroup:
        make_cgroup(cgroup, spec["memory_bytes"])
    namespaces = spec["mode"] == "namespaces"
    if namespaces:
        check(libc.unshare(CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWPID), "unshare")
    guard = os.getpid()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # a stop request waits until init can be killed
    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        set_parent_death_signal(signal.SIGKILL, 0 if namespaces else guard)  # a parent outside the pid ns reads as 0
        if not namespaces:
            os.setpgid(0, 0)
        init(spec, staging, program, cgroup)
    if not namespaces:
        try:  # also here, so that the group exists before a stop request can kill it
            os.setpgid(pid, pid)
        except OSError:
            pass
    init_pidfd = os.pidfd_open(pid)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    if not namespaces:
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped: the group id stays ours
        kill_group(pid)
        kill_uid(spec["uid"])  # children that left the group
    _, init_status = os.waitpid(pid, 0)  # retried after the SIGTERM handler (PEP 475)
    memory_exceeded = remove_cgroup(cgroup) if cgroup else False
    shutil.rmtree(staging, ignore_errors=True)
    report("done", memory_exceeded=memory_exceeded, init_status=init_status)
    os._exit(0)


def make_cgroup(spec, memory_bytes):
    try:
        os.mkdir(spec["path"])
        if spec["version"] == 2:
            limits = {"memory.max": memory_bytes, "memory.swap.max": 0}
        else:
            limits = {"memory.limit_in_bytes": memory_bytes, "memory.memsw.limit_in_bytes": memory_bytes}
        for name, value in limits.items():
            path = os.path.join(spec["path"], name)
            if os.path.exists(path):
                with open(path, "w") as f:
                    f.write(str(value))
    except OSError as exc:
        fail(f"cannot create the memory cgroup {spec['path']}: {exc}")


def remove_cgroup(spec):
    exceeded = False
    try:
        if spec["version"] == 2:
            with open(os.path.join(spec["path"], "memory.events")) as f:
                events = dict(line.split() for line in f)
            exceeded = int(events.get("max", 0)) > 0 or int(events.get("oom_kill", 0)) > 0
        else:
            with open(os.path.join(spec["path"], "memory.oom_control")) as f:
                events = dict(line.split() for line in f)
            exceeded = int(events.get("oom_kill", 0)) > 0
            with open(os.path.join(spec["path"], "memory.failcnt")) as f:
                exceeded |= int(f.read()) > 0
    except (OSError, ValueError):
        pass
    for _ in range(100):
        try:
            os.rmdir(spec["path"])
            break
        except FileNotFoundError:
            break
        except OSError:
            os.sched_yield()  # tasks that were just killed may still be leaving
    return exceeded


def kill_group(pgid):
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass


def kill_uid(uid):
    pid = os.fork()
    if pid == 0:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
        try:
            os.kill(-1, signal.SIGKILL)  # every process of this uid except the caller
        except OSError:
            pass
        os._exit(0)
    os.waitpid(pid, 0)


# ---- init --------------------------------------------------------------------------------

def init(spec, staging, program, cgroup):
    try:
        prepare(spec, staging, program, cgroup)
    except Exception as exc:  # noqa: BLE001 - any set-up failure is reported, never a traceback
        fail(f"{type(exc).__name__}: {exc}")
    init_pid = os.getpid()  # as the program sees it (1 in a pid namespace)
    pid = os.fork()
    if pid == 0:
        run_program(spec, "/work" if spec["mode"] == "namespaces" else os.path.join(staging, "work"), init_pid)
        sys.exit(0)  # an ordinary interpreter exit: the program's atexit handlers and buffers run
    _, status = os.waitpid(pid, 0)
    report("exit", wait_status=status)
    os._exit(0)


def prepare(spec, staging, program, cgroup):
    if cgroup:
        with open(os.path.join(cgroup["path"], "cgroup.procs"), "w") as f:
            f.write("0")
    if spec["mode"] == "namespaces":
        # A mount namespace of init's own: pivot_root moves the root of every process in it,
        # and the guard must keep the host's view to clean up.
        check(libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
        build_root(spec, staging)
        workdir = "/work"
    else:
        workdir = os.path.join(staging, "work")
        os.mkdir(workdir, 0o700)  # shared /tmp in rlimits mode: other runs' uids stay out
    fd = os.open(os.path.join(workdir, "prog.py"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(program)
    uid = spec["uid"]
    if uid is not None:
        os.chown(workdir, uid, uid)
        os.chown(os.path.join(workdir, "prog.py"), uid, uid)


def read_only_sources():
    """What the program may see: the interpreter, its stdlib, and the directories of the shared
    libraries this interpreter has loaded (libc and the libraries of extension modules)."""
    prefix = os.path.realpath(sys.base_prefix)
    stdlib = os.path.dirname(os.path.realpath(os.__file__))
    files = {os.path.realpath(sys.executable)}
    dirs = {stdlib}
    with open("/proc/self/maps") as f:
        for line in f:
            path = line.split()[-1] if len(line.split()) >= 6 else ""
            if path.startswith("/") and ".so" in path and os.path.exists(path):
                if path.startswith(prefix + "/"):
                    files.add(path)
                else:
                    dirs.add(os.path.dirname(path))
    files = {path for path in files if not any(path.startswith(d + "/") for d in dirs)}
    site_packages = [os.path.join(stdlib, "site-packages"), os.path.join(stdlib, "dist-packages")]
    return sorted(files), sorted(d for d in dirs if d != "/"), [p for p in site_packages if os.path.isdir(p)]


def bind_read_only(source, target, is_dir):
    if is_dir:
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        open(target, "a").close()
    mount(source, target, None, MS_BIND | MS_REC)
    mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def build_root(spec, staging):
    """A tmpfs root holding only what `read_only_sources` names, then pivot_root into it."""
    files, dirs, hidden = read_only_sources()
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    root = staging
    mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
    for name in ("lib", "lib64", "bin"):  # merged-/usr hosts: keep the loader's paths valid
        if os.path.islink("/" + name):
            os.symlink(os.readlink("/" + name), root + "/" + name)
    for path in dirs:
        bind_read_only(path, root + path, True)
    for path in files:
        bind_read_only(path, root + path, False)
    for path in hidden:  # the interpreter's installed packages (and the project) stay out of view
        mount("tmpfs", root + path, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV, "size=4k,mode=0555")
    os.makedirs(root + "/dev", exist_ok=True)
    for name in DEVICES:
        if os.path.exists("/dev/" + name):
            open(root + "/dev/" + name, "a").close()
            mount("/dev/" + name, root + "/dev/" + name, None, MS_BIND)
            mount(None, root + "/dev/" + name, None, MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NOEXEC)
    for name in ("proc", "work"):
        os.mkdir(root + "/" + name)
    os.symlink("/work", root + "/tmp")
    mount("tmpfs", root + "/work", "tmpfs", MS_NOSUID | MS_NODEV, f"size={spec['tmpfs_mb']}m,mode=0755")
    os.chdir(root)
    number = SYS_PIVOT_ROOT.get(os.uname().machine)
    if number is None:
        fail(f"pivot_root: unknown syscall number on {os.uname().machine}")
    check(libc.syscall(number, b".", b"."), "pivot_root")
    check(libc.umount2(b".", MNT_DETACH), "detach the host root")
    os.chdir("/")
    mount(None, "/", None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)


# ---- program -----------------------------------------------------------------------------

SECCOMP_ARCH = {"x86_64": (0xC000003E, 41), "aarch64": (0xC00000B7, 198)}  # audit arch, socket(2) number
SYS_IO_URING_SETUP = 425  # the same on both; io_uring can open sockets without socket(2)


def block_network(allow_unix):
    """A seccomp filter: socket(2) (other than AF_UNIX when `allow_unix`) and io_uring fail with
    EACCES; another syscall ABI (32-bit, x32) kills the process. The kernel enforces it on every
    thread and child, so it holds against raw system calls too (the network namespace is the
    first wall; in rlimits mode this is the only one). AF_UNIX is allowed only with a private
    root and network namespace, where no host socket can be named; in rlimits mode the host's
    (Ray's raylet, a Docker daemon) could be. socketpair(2) stays allowed: it reaches nothing.
    The program's channels are pipes (stdin/stdout), so no mode needs socket(2)."""
    arch = SECCOMP_ARCH.get(os.uname().machine)
    if arch is None:
        fail(f"no seccomp filter for {os.uname().machine}")
    audit_arch, sys_socket = arch

    class Filter(ctypes.Structure):
        _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint)]

    class Program(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(Filter))]

    load, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06
    allow, deny, kill = 0x7FFF0000, 0x00050000 | 13, 0x80000000
    code = [
        (load, 0, 0, 4),                     # 0: arch
        (jeq, 0, 8, audit_arch),             # 1: other ABI -> 10 (kill)
        (load, 0, 0, 0),                     # 2: syscall number
        (jge, 5, 0, 0x40000000),             # 3: x32 numbers -> 9 (deny)
        (jeq, 4, 0, SYS_IO_URING_SETUP),     # 4: -> 9 (deny)
        (jeq, 0, 2, sys_socket),             # 5: not socket(2) -> 8 (allow)
        (load, 0, 0, 16),                    # 6: socket's domain (args[0], low word)
        (jeq, 0 if allow_unix else 1, 1, 1),  # 7: AF_UNIX -> 8 (allow) or 9; else 9 (deny)
        (ret, 0, 0, allow),                  # 8
        (ret, 0, 0, deny),                   # 9
        (ret, 0, 0, kill),                   # 10
    ]
    filters = (Filter * len(code))(*[Filter(*instruction) for instruction in code])
    program = Program(len(code), filters)
    check(libc.prctl(38, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    check(libc.prctl(22, 2, ctypes.byref(program), 0, 0), "prctl(PR_SET_SECCOMP)")


# rlimits mode as root: after the uid drop an interpreter under a private home (pyenv in /root)
# is unreadable and only modules loaded before it can be imported; these cover the code
# reward's runtimes and common programs.
PRELOAD = ("math", "traceback", "json", "re", "collections", "itertools", "functools", "heapq", "bisect",
           "string", "copy", "typing", "random", "fractions", "decimal", "statistics")


def run_program(spec, workdir, init_pid):
    uid = spec["uid"]
    if uid is not None and spec["mode"] != "namespaces":
        for name in PRELOAD:
            __import__(name)
    if uid is not None:
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
        except OSError as exc:
            fail(f"cannot drop privileges to uid {uid}: {exc}")
        if os.getuid() == 0 or os.geteuid() == 0:
            fail("still root after dropping privileges")
    # After the uid drop: a change of credentials clears the death signal.
    set_parent_death_signal(signal.SIGKILL, init_pid)
    inherited = [int(fd) for fd in os.listdir("/proc/self/fd")]
    try:
        for name, value in spec["rlimits"].items():
            resource.setrlimit(getattr(resource, name), tuple(value))
    except (ValueError, OSError) as exc:
        fail(f"setrlimit: {exc}")
    block_network(allow_unix=spec["mode"] == "namespaces")
    os.chdir(workdir)
    sys.argv = ["prog.py"]
    sys.path.insert(0, workdir)
    report("started")
    os.closerange(3, max(inherited) + 1)  # the status pipe and the uid lease
    with open("prog.py", "rb") as f:
        code = compile(f.read(), "prog.py", "exec")
    main_module = types.ModuleType("__main__")
    main_module.__file__ = "prog.py"
    sys.modules["__main__"] = main_module
    exec(code, main_module.__dict__)
    sys.stdout.flush()
    sys.stderr.flush()


if __name__ == "__main__":
    main()
