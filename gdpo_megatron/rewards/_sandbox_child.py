"""First code to run inside a sandbox (stdlib only; started as `python -I -S` by sandbox.py).

Runs as root only within its own namespaces (or as the real root in rlimits mode), so it
does the privileged set-up first and drops to the sandbox uid before any untrusted line:
private tmpfs mounts -> write the program -> drop uid/gid -> resource limits -> socket
audit hook -> run the program as __main__ in the same interpreter.
"""

import ctypes
import json
import os
import resource
import runpy
import sys

SETUP_FAILED = 121
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC = 1, 2, 4, 32, 4096, 16384
PYTHON_VIEW = "/tmp/.python"  # where an unreadable interpreter prefix is bind-mounted


def fail(message):
    sys.stderr.write(f"gdpo-sandbox-setup-error: {message}\n")
    sys.stderr.flush()
    os._exit(SETUP_FAILED)


def mount(source, target, fstype, flags, options):
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(source.encode(), target.encode(), fstype.encode(), flags, options.encode()) != 0:
        fail(f"mount {source} on {target}: {os.strerror(ctypes.get_errno())}")


def first_private_dir(path):
    """The outermost directory on the way to `path` that an unrelated uid cannot enter, or None."""
    path = os.path.realpath(path)
    parts = path.strip("/").split("/")
    for i in range(1, len(parts) + 1):
        current = "/" + "/".join(parts[:i])
        if not os.stat(current).st_mode & 0o001:
            return current
    return None


def expose_interpreter():
    """An interpreter installed under a private home (pyenv in /root, mode 0700) is unreadable after
    the uid drop. Hide that home behind an empty tmpfs and bind the interpreter prefix back, read-only,
    at its own path, so sys.path and already-imported packages stay valid and nothing else shows."""
    prefix = os.path.realpath(sys.base_prefix)
    private = first_private_dir(os.path.dirname(os.__file__))
    if private is None:
        return
    os.mkdir(PYTHON_VIEW)
    mount(prefix, PYTHON_VIEW, "", MS_BIND | MS_REC, "")
    mount("tmpfs", private, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
    os.makedirs(prefix, mode=0o755, exist_ok=True)
    mount(PYTHON_VIEW, prefix, "", MS_BIND | MS_REC, "")
    mount("none", prefix, "", MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, "")


def block_sockets(event, args):
    # Fallback where no network namespace exists; harmless (redundant) inside one.
    if event in ("socket.__new__", "socket.getaddrinfo", "socket.connect"):
        raise PermissionError("network access is disabled in the sandbox")


def main():
    staging = sys.argv[1]
    try:
        with open(os.path.join(staging, "spec.json")) as f:
            spec = json.load(f)
        with open(os.path.join(staging, "prog.py"), "rb") as f:
            program = f.read()
    except OSError as exc:
        fail(f"cannot read the staged program: {exc}")

    if spec["private_tmp"]:
        for target in ("/tmp", "/var/tmp", "/dev/shm"):
            if os.path.isdir(target):
                mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, f"size={spec['tmpfs_mb']}m,mode=1777")
        if spec["uid"] is not None:
            expose_interpreter()
        workdir = "/tmp/work"
        os.mkdir(workdir)
        with open(os.path.join(workdir, "prog.py"), "wb") as f:
            f.write(program)
    else:
        workdir = staging

    # The program runs in a forked child; this process stays behind (root in the namespaces,
    # pid 1 there) and reports how the child ended on a pipe that the program never sees:
    # exit statuses through `unshare` lose signals, and pid 1 would shrug off SIGXCPU.
    status_fd = int(sys.argv[2])
    pid = os.fork()
    if pid == 0:
        os.close(status_fd)
        run_program(spec, workdir)
        return
    _, status = os.waitpid(pid, 0)
    os.write(status_fd, json.dumps({"wait_status": status}).encode())
    os.close(status_fd)
    code = os.waitstatus_to_exitcode(status)
    os._exit(code if code >= 0 else 128 - code)


def run_program(spec, workdir):
    uid = spec["uid"]
    if uid is not None:
        for root, dirs, files in os.walk(workdir):
            for name in [root] + [os.path.join(root, n) for n in dirs + files]:
                os.chown(name, uid, uid)
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
        except OSError as exc:
            fail(f"cannot drop privileges to uid {uid}: {exc}")
        if os.getuid() == 0 or os.geteuid() == 0:
            fail("still root after dropping privileges")

    try:
        for name, value in spec["rlimits"].items():
            resource.setrlimit(getattr(resource, name), tuple(value))
    except (ValueError, OSError) as exc:
        fail(f"setrlimit: {exc}")

    if spec["block_sockets"]:
        sys.addaudithook(block_sockets)

    os.chdir(workdir)
    sys.argv = ["prog.py"]
    sys.path.insert(0, workdir)
    runpy.run_path("prog.py", run_name="__main__")

main()
