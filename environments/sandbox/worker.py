"""The fork server that runs inside a sandbox (docker container, bwrap namespace or a bare local process).

It reads one JSON request per line on stdin and answers one JSON line on stdout. Each execution runs in a
fresh child forked from this pristine process, under rlimits, in its own scratch directory that is wiped
afterwards; when the worker is PID 1 of its own PID namespace every leftover process is killed after each
run. A session keeps one long-lived child (a kernel) whose globals persist across cells.

Standard library only: this file is shipped into the sandbox and started by process.WORKER_BOOTSTRAP. It runs
under the sandbox's own python3 and is deliberately dependency- and annotation-light, so mypy only checks its
bodies. It imports C modules where the stdlib has a Python layer over them (`_ast`, `_json`, `_signal`):
every page the worker holds is copied at each fork and unmapped at each exit, and json, ast, traceback,
contextlib and signal (with re, enum, tokenize... behind them) were ~1.8 MB of it.
"""
# mypy: disallow-untyped-defs=False
# ruff: noqa: SIM105 (try/except, not contextlib.suppress: see above)

import _ast
import _json
import _signal
import builtins
import ctypes
import gc
import io
import marshal
import os
import resource
import select
import stat
import sys
import time

PLAIN_TYPES = (type(None), bool, int, float, complex, str, bytes, list, tuple, dict, set, frozenset)
MAX_RESULT_BYTES = 8 * 1024 * 1024
STDIN_NAME = ".stdin"
READ_SIZE = 65536  # larger reads make malloc grow the heap, and every page of it is copied at each fork
CHILD_STREAMS = None
"""(stdin, stdout, stderr) text streams on fds 0-2, made once in the worker and never used by it, so a child
only moves its pipes onto fds 0-2. Page faults after fork are what a run costs here, and building three
TextIOWrappers in every child touched ~80 pages of the worker's memory."""
DEVNULL_FD = -1
CHILD_ENV = {
    "HOME": "/tmp",
    "TMPDIR": "/tmp",
    "PATH": "/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "PYTHONHASHSEED": "0",
}


# --------------------------------------------------------------------------------------------- worker side


class Worker:
    """The parent process: talks to the host and forks one child per execution.

    The child for the next execution is forked ahead of time (a "spare"), once the previous run is over and
    cleaned up, so a request pays only for the pipe hop and the program itself. The spare is forked after
    every leftover of the previous run is dead, so no run ever shares the sandbox with the next run's process.
    """

    def __init__(self, config, in_fd=0, out_fd=1):
        self.sandboxed = bool(config.get("sandboxed"))
        self.scratch = config.get("scratch") or "/tmp"
        self.wipe_dirs = list(config.get("wipe_dirs") or [])
        self.nproc_rlimit = bool(config.get("nproc_rlimit", True))
        self.prefork = bool(config.get("prefork", True))
        self.in_fd = in_fd
        self.out_fd = out_fd
        self.runs = 0
        self.run_dir = ""  # the one directory every run of this worker starts in (emptied after each run)
        self.ran = False  # a run finished since the last wipe
        self.dirty = False
        self.kernel = None  # (pid, control_w, reply_r, out_r, err_r, run_dir) while a session is open
        self.spare = None  # (pid, pidfd, request_w, out_r, err_r, res_r): the next run's child
        self.is_init = os.getpid() == 1 and self.sandboxed
        self.settings = process_settings()

    def serve(self):
        """Answer requests (length-prefixed marshal frames from the host) until the host closes the pipe."""
        buf = bytearray()
        while True:
            frame = read_frame(buf)
            if frame is None:
                chunk = os.read(self.in_fd, READ_SIZE)
                if not chunk:
                    return
                buf += chunk
                continue
            del buf[: buf.find(b"\n") + 1 + len(frame)]
            write_all(self.out_fd, self.answer(frame))
            del frame
            # The reply is out: tidy up and fork the next child while the host reads it. The next request is
            # read only after this, so no run starts before the previous one's files are gone.
            self.idle()

    def answer(self, frame):
        """One request in, one JSON line out. Requests come from the host (trusted) as marshal, which parses
        with a fraction of the page faults of json; replies are JSON, so the host never unmarshals bytes
        that came out of a sandbox."""
        try:
            request = marshal.loads(frame)
            if not isinstance(request, dict):
                raise ValueError(f"expected a dict, got {type(request).__name__}")
        except (ValueError, EOFError, TypeError) as exc:
            reply: dict = {"status": "sandbox_error", "error": f"bad request: {exc}"}
        else:
            try:
                reply = self.handle(request, frame)
            except Exception:
                import traceback  # a worker bug: rare, so not worth keeping imported

                reply = {"status": "sandbox_error", "error": traceback.format_exc(limit=3)}
            reply["id"] = request.get("id")
        return dump_json(reply).encode() + b"\n"

    def idle(self):
        """Work that need not delay a reply: wipe the last run's files, then fork the next run's child."""
        if self.ran:
            self.ran = False
            self.wipe_all()
        if self.prefork and self.spare is None and self.kernel is None:
            self.spare = self.fork_spare()

    def handle(self, request, frame):
        """The reply to one request; `frame` is its marshal encoding, passed on to a run's child as is."""
        op = request.get("op")
        if op == "ping":
            spare = self.spare[0] if self.spare else None
            return {
                "status": "ok",
                "pid": os.getpid(),
                "uid": os.getuid(),
                "init": self.is_init,
                "spare": spare,
            }
        if op in ("exec", "call", "tests"):
            return self.run_child(request, frame)
        if op == "session_open":
            return self.session_open(request)
        if op == "session_cell":
            return self.session_cell(request)
        if op == "session_close":
            self.kill_kernel()
            return {"status": "ok"}
        return {"status": "sandbox_error", "error": f"unknown op {op!r}"}

    # -------------------------------------------------------------------- one execution in a fresh child

    def new_run_dir(self):
        self.runs += 1
        path = os.path.join(self.scratch, f"run-{os.getpid()}-{self.runs}")
        os.mkdir(path, mode=0o700)
        return path

    def enter_run_dir(self):
        """Make the worker's run directory and move into it: children inherit cwd, HOME and TMPDIR."""
        self.run_dir = self.new_run_dir()
        os.chdir(self.run_dir)
        os.environ["HOME"] = os.environ["TMPDIR"] = self.run_dir

    def wipe_all(self):
        """Empty the run directory and the sandbox's writable folders (keeping the run directory itself)."""
        for folder in self.wipe_dirs:
            wipe(folder, keep=self.run_dir)
        try:
            info = os.lstat(self.run_dir)
            fresh = not stat.S_ISDIR(info.st_mode) or info.st_mode & 0o777 != 0o700
        except OSError:
            fresh = True
        if fresh:  # the run removed, replaced or re-permissioned its own directory: start a new one
            remove_tree(self.run_dir)
            self.enter_run_dir()
        else:
            wipe(self.run_dir)

    def fork_spare(self):
        """Fork a child that sets itself up (own session, fds) and then waits for its request."""
        req_r, req_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        res_r, res_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: never returns
            for fd in (req_w, out_r, err_r, res_r):
                os.close(fd)
            spare_main(req_r, out_w, err_w, res_w, self.nproc_rlimit)
        for fd in (req_r, out_w, err_w, res_w):
            os.close(fd)
        return (pid, os.pidfd_open(pid), req_w, out_r, err_r, res_r)

    def take_spare(self):
        """The prepared child, or a new one when there is none or it died (e.g. a session killed it)."""
        spare, self.spare = self.spare, None
        if spare is not None and select.select([spare[1]], [], [], 0)[0]:
            self.drop_spare(spare)
            spare = None
        return spare or self.fork_spare()

    def drop_spare(self, spare=None):
        if spare is None:
            spare, self.spare = self.spare, None
        if spare is None:
            return
        pid, pidfd, req_w, out_r, err_r, res_r = spare
        kill_tree(pid)
        reap(pid)
        close_all((pidfd, req_w, out_r, err_r, res_r))

    def run_child(self, request, frame):
        limits = request.get("limits") or {}
        pid, pidfd, req_w, out_r, err_r, res_r = self.take_spare()
        if request.get("stdin"):
            with open(os.path.join(self.run_dir, STDIN_NAME), "w") as handle:
                handle.write(request["stdin"])
        started = time.monotonic()
        try:
            write_all(req_w, frame)
        except OSError:  # a child that died already is reported by collect
            pass
        os.close(req_w)
        try:  # collect kills what is left of the run before it returns
            outcome = self.collect(pid, pidfd, {"stdout": out_r, "stderr": err_r}, res_r, limits, started)
        except BaseException:
            self.kill_leftovers(pid)
            raise
        finally:
            os.close(pidfd)
        outcome["dirty"] = self.dirty or self.tampered() or (self.sandboxed and sysv_ipc_left())
        self.dirty = False
        self.ran = True
        return outcome

    def tampered(self):
        """True when a run changed this process's limits or scheduling, which the next runs would inherit.

        A run has the worker's uid, so it may prlimit, renice, taskset or chrt the worker. Checked once the
        run's processes are all dead; the host then replaces the worker."""
        return process_settings() != self.settings

    def collect(self, pid, pidfd, pipes, res_r, limits, started):
        """Wait for the child, capturing its output, until it exits, times out or floods its output."""
        timeout = float(limits.get("timeout_s", 10))
        max_output = int(limits.get("max_output_bytes", 1 << 20))
        keep = int(limits.get("keep_output_bytes", 64 * 1024))
        captures = {"stdout": Capture(keep), "stderr": Capture(keep)}
        result = bytearray()
        open_fds = {pipes["stdout"]: "stdout", pipes["stderr"]: "stderr", res_r: "result"}
        status = None
        exit_status = None
        try:
            while True:
                remaining = started + timeout - time.monotonic()
                if remaining <= 0:
                    status = "timeout"
                    break
                ready, _, _ = select.select([*open_fds, pidfd], [], [], remaining)
                for fd in ready:
                    if fd == pidfd:
                        continue
                    chunk = os.read(fd, 65536)
                    name = open_fds[fd]
                    if not chunk:
                        del open_fds[fd]
                        os.close(fd)
                    elif name == "result":
                        if len(result) < MAX_RESULT_BYTES:
                            result += chunk
                    else:
                        captures[name].add(chunk)
                if captures["stdout"].total + captures["stderr"].total > max_output:
                    status = "output_limit"
                    break
                if pidfd in ready:
                    exit_status = os.waitpid(pid, 0)[1]
                    break
            if exit_status is None:
                kill_tree(pid)
                exit_status = os.waitpid(pid, 0)[1]
            self.dirty = self.kill_leftovers(pid)
            # Nothing of the run is alive now: take what is still buffered in the pipes.
            for fd, name in list(open_fds.items()):
                drain(fd, captures.get(name), result if name == "result" else None)
        finally:
            for fd in open_fds:
                os.close(fd)
        duration = time.monotonic() - started
        return self.outcome(status, exit_status, captures, bytes(result), duration, max_output)

    def outcome(self, status, exit_status, captures, result_bytes, duration, max_output):
        report = parse_report(result_bytes)
        exit_code = None
        signum = None
        if os.WIFEXITED(exit_status):
            exit_code = os.WEXITSTATUS(exit_status)
        elif os.WIFSIGNALED(exit_status):
            signum = os.WTERMSIG(exit_status)
            exit_code = -signum
        error = None
        if status is None:
            kind = report.get("kind")
            if signum in (_signal.SIGXCPU,):
                status, error = "timeout", "CPU time limit exceeded"
            elif kind == "memory":
                status, error = "memory", "memory limit exceeded (MemoryError)"
            elif signum == _signal.SIGKILL:
                status, error = "memory", "killed by SIGKILL (memory limit)"
            elif signum is not None:
                status, error = "error", f"killed by signal {signum}"
            elif exit_code != 0:
                status = "error"
                error = report.get("error") or f"exit code {exit_code}"
            else:
                status = "ok"
        elif status == "timeout":
            error = "wall-clock limit exceeded"
        elif status == "output_limit":
            error = f"output exceeded {max_output} bytes"
        reply = {
            "status": status,
            "stdout": captures["stdout"].text(),
            "stderr": captures["stderr"].text(),
            "exit_code": exit_code,
            "duration_s": round(duration, 6),
            "error": error,
        }
        if "value" in report:
            reply["value"] = report["value"]
        if report.get("kind") == "passed":
            reply["passed"] = True
        if report.get("kind") == "exception":
            reply["exception"] = report.get("type")
        return reply

    def kill_leftovers(self, pid):
        """Kill whatever the run left behind. Returns True when something was still alive."""
        dirty = False
        try:
            os.killpg(pid, _signal.SIGKILL)
            dirty = True
        except OSError:
            pass
        if self.is_init:
            dirty = kill_everything_else() or dirty
        return dirty

    def cleanup(self, pid, run_dir):
        """Kill whatever the run left behind and wipe its files. Returns True when something was left."""
        dirty = self.kill_leftovers(pid) or self.dirty
        self.dirty = False
        remove_tree(run_dir)
        self.wipe_all()
        return dirty

    # ------------------------------------------------------------------------------- stateful sessions

    def session_open(self, request):
        self.kill_kernel()
        self.drop_spare()  # a kernel lives long: keep no idle child beside it
        limits = request.get("limits") or {}
        run_dir = self.new_run_dir()
        ctl_r, ctl_w = os.pipe()
        rep_r, rep_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            for fd in (ctl_w, rep_r, out_r, err_r):
                os.close(fd)
            kernel_main(limits, run_dir, ctl_r, rep_w, out_w, err_w, self.nproc_rlimit)
        for fd in (ctl_r, rep_w, out_w, err_w):
            os.close(fd)
        self.kernel = (pid, ctl_w, rep_r, out_r, err_r, run_dir)
        return {"status": "ok"}

    def session_cell(self, request):
        if self.kernel is None:
            return {"status": "sandbox_error", "error": "no open session"}
        _pid, ctl_w, rep_r, out_r, err_r, _run_dir = self.kernel
        limits = request.get("limits") or {}
        timeout = float(limits.get("timeout_s", 10))
        max_output = int(limits.get("max_output_bytes", 1 << 20))
        captures = {"stdout": Capture(int(limits.get("keep_output_bytes", 64 * 1024)))}
        captures["stderr"] = Capture(captures["stdout"].keep)
        started = time.monotonic()
        try:
            write_frame(ctl_w, marshal.dumps(request.get("code", "")))
        except OSError:
            self.kill_kernel()
            return {"status": "sandbox_error", "error": "the session kernel is gone"}
        reply_buf = bytearray()
        status = None
        reply = None
        fds = {out_r: "stdout", err_r: "stderr", rep_r: "reply"}
        while reply is None:
            remaining = started + timeout - time.monotonic()
            if remaining <= 0:
                status = "timeout"
                break
            ready, _, _ = select.select(list(fds), [], [], remaining)
            for fd in ready:
                chunk = os.read(fd, 65536)
                name = fds[fd]
                if name == "reply":
                    if not chunk:
                        status = "error"
                        break
                    reply_buf += chunk
                    reply = read_frame(reply_buf)
                elif chunk:
                    captures[name].add(chunk)
            if status is not None:
                break
            if captures["stdout"].total + captures["stderr"].total > max_output:
                status = "output_limit"
                break
        if reply is not None:
            for fd in (out_r, err_r):
                drain(fd, captures["stdout" if fd == out_r else "stderr"], None)
        duration = time.monotonic() - started
        result = {
            "stdout": captures["stdout"].text(),
            "stderr": captures["stderr"].text(),
            "duration_s": round(duration, 6),
        }
        if reply is None:
            # A cell that hangs, floods or kills the kernel ends the whole session.
            self.kill_kernel()
            errors = {
                "timeout": "cell exceeded its wall-clock limit; the session was closed",
                "output_limit": f"cell output exceeded {max_output} bytes; the session was closed",
                "error": "the session kernel died; the session was closed",
            }
            result.update(status=status, error=errors[str(status)], exit_code=None, closed=True)
            if status == "error":
                result["status"] = "memory" if self.kernel_died_of_memory(captures) else "error"
            return result
        payload = load_json(bytes(reply).decode("utf-8", "replace"))
        result.update(
            status=payload.get("status", "error"),
            error=payload.get("error"),
            exit_code=0 if payload.get("status") == "ok" else 1,
            closed=False,
        )
        if "value" in payload:
            result["value"] = payload["value"]
        return result

    def kernel_died_of_memory(self, captures):
        return "MemoryError" in captures["stderr"].text()

    def kill_kernel(self):
        if self.kernel is None:
            return
        pid, ctl_w, rep_r, out_r, err_r, run_dir = self.kernel
        self.kernel = None
        close_all((ctl_w, rep_r, out_r, err_r))
        kill_tree(pid)
        reap(pid)
        self.cleanup(pid, run_dir)


class Capture:
    """Bytes of one stream: the first keep/2 and the last keep/2 bytes, and the total size."""

    def __init__(self, keep):
        self.keep = keep
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def add(self, chunk):
        self.total += len(chunk)
        half = self.keep // 2
        room = half - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if chunk:
            self.tail += chunk
            if len(self.tail) > self.keep - half:
                del self.tail[: len(self.tail) - (self.keep - half)]

    def text(self):
        kept = len(self.head) + len(self.tail)
        if self.total > kept:
            middle = f"\n... [{self.total - kept} bytes truncated] ...\n"
            return self.head.decode("utf-8", "replace") + middle + self.tail.decode("utf-8", "replace")
        return (bytes(self.head) + bytes(self.tail)).decode("utf-8", "replace")


def drain(fd, capture, result):
    """Read what is already buffered in a pipe without blocking on writers that are still alive."""
    os.set_blocking(fd, False)
    try:
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                return
            if capture is not None:
                capture.add(chunk)
            elif result is not None and len(result) < MAX_RESULT_BYTES:
                result += chunk
    except (BlockingIOError, OSError):
        return


def parse_report(data):
    if not data:
        return {}
    try:
        report = load_json(data.decode("utf-8", "replace").strip().splitlines()[-1])
    except (ValueError, IndexError, StopIteration, RecursionError):  # a program may write junk there
        return {}
    return report if isinstance(report, dict) else {}


RLIMITS = tuple(getattr(resource, name) for name in sorted(dir(resource)) if name.startswith("RLIMIT_"))


def process_settings():
    """What another process of the same user can change about this one and its future children."""
    return (
        tuple(map(resource.getrlimit, RLIMITS)),
        os.getpriority(os.PRIO_PROCESS, 0),
        os.sched_getscheduler(0),
        os.sched_getaffinity(0),
    )


SYSV_IPC_TABLES = ("/proc/sysvipc/shm", "/proc/sysvipc/msg", "/proc/sysvipc/sem")


def sysv_ipc_left():
    """True when the sandbox's IPC namespace holds a System V object, which would outlive the run that made
    it and let the next run read it."""
    for path in SYSV_IPC_TABLES:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            if os.read(fd, 4096).count(b"\n") > 1:  # a header line, then one line per object
                return True
        finally:
            os.close(fd)
    return False


def kill_tree(pid):
    """Kill a child and its process group (the child made itself a group leader)."""
    for kill in (os.killpg, os.kill):
        try:
            kill(pid, _signal.SIGKILL)
        except OSError:
            pass


def reap(pid):
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def close_all(fds):
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def kill_everything_else():
    """As PID 1 of the sandbox's PID namespace: kill and reap every other process. True if any was left."""
    dirty = False
    for _ in range(200):
        try:
            os.kill(-1, _signal.SIGKILL)  # as PID 1 this signals every process of the namespace but ourselves
            dirty = True
        except ProcessLookupError:
            pass
        reaped_any = False
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return dirty
            if pid == 0:
                break
            reaped_any = True
        if not reaped_any:
            time.sleep(0.001)
    return dirty


def wipe(folder, keep=None):
    """Remove everything in folder but `keep`. A run may have taken permissions away from what it left behind
    (a folder chmod 000 would otherwise survive into the next run, which could chmod it back and read it)."""
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        path = os.path.join(folder, name)
        if path != keep:
            remove_tree(path)


def remove_tree(path):
    try:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            os.unlink(path)
            return
        os.chmod(path, 0o700)
        with os.scandir(path) as entries:
            names = [entry.path for entry in entries]
    except OSError:
        return
    for child in names:
        remove_tree(child)
    try:
        os.rmdir(path)
    except OSError:
        pass


def _no_default(value):
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


_ENCODER = _json.make_encoder(
    None, _no_default, _json.encode_basestring_ascii, None, ": ", ", ", False, False, True
)


def dump_json(value):
    """json.dumps(value), straight from the C encoder."""
    return "".join(_ENCODER(value, 0))


class _DecoderSettings:
    """The attributes _json's C scanner reads from a json.JSONDecoder (with json.loads's defaults)."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = float  # "NaN", "Infinity", "-Infinity"


_SCANNER = _json.make_scanner(_DecoderSettings())  # type: ignore[arg-type]  # duck-typed like the C code


def load_json(text):
    """json.loads(text) for one value with no leading whitespace, straight from the C scanner. Raises
    ValueError or StopIteration on bad input."""
    value, end = _SCANNER(text, 0)
    if text[end:].strip():
        raise ValueError("extra data after the JSON value")
    return value


def write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def write_frame(fd, payload):
    data = b"%d\n" % len(payload) + payload
    while data:
        written = os.write(fd, data)
        data = data[written:]


def read_frame(buf):
    """One length-prefixed frame from buf, or None when it is not complete yet."""
    newline = buf.find(b"\n")
    if newline < 0:
        return None
    size = int(buf[:newline])
    if len(buf) < newline + 1 + size:
        return None
    return buf[newline + 1 : newline + 1 + size]


# ---------------------------------------------------------------------------------------------- child side


def enter_child(limits, run_dir, stdin_path, out_w, err_w, nproc_rlimit):
    """Everything a fresh child does before running code: own group, fds, clean env, cwd, rlimits."""
    prepare_child(out_w, err_w)
    os.chdir(run_dir)
    os.environ["HOME"] = os.environ["TMPDIR"] = run_dir  # the rest is the worker's own CHILD_ENV
    apply_rlimits(limits, nproc_rlimit)
    if stdin_path:
        redirect_stdin(stdin_path)


def prepare_child(out_w, err_w):
    """The part of a child's setup that does not depend on its request (done ahead of time by spares).

    Kept to a few C-level calls: cwd, HOME and TMPDIR are the worker's own (its run directory) and the text
    streams were made in the worker (see CHILD_STREAMS)."""
    os.setsid()
    _signal.signal(_signal.SIGPIPE, _signal.SIG_DFL)  # SIGINT was reset in the worker already
    os.dup2(DEVNULL_FD, 0)
    os.dup2(out_w, 1)
    os.dup2(err_w, 2)
    assert CHILD_STREAMS is not None, "make_child_streams() runs in the worker before any fork"
    sys.stdin, sys.stdout, sys.stderr = CHILD_STREAMS
    # `random` reseeds itself after fork; numpy does not, and children must not share one random sequence.
    if "numpy.random" in sys.modules:
        try:
            sys.modules["numpy.random"].seed()
        except Exception:
            pass


def make_child_streams():
    """Once, in the worker: the streams every child uses, and /dev/null for their stdin."""
    global CHILD_STREAMS, DEVNULL_FD
    DEVNULL_FD = os.open(os.devnull, os.O_RDONLY)
    CHILD_STREAMS = (
        io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8", errors="replace"),
        io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8", errors="replace"),
        io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8", errors="replace"),
    )
    sys.argv = ["program"]


def redirect_stdin(path):
    fd = os.open(path, os.O_RDONLY)
    if fd != 0:
        os.dup2(fd, 0)
        os.close(fd)


def apply_rlimits(limits, nproc_rlimit):
    """Hard limits for this process and its children (plain calls: this runs in every child)."""
    cpu = int(limits.get("cpu_s") or max(1, int(float(limits.get("timeout_s", 10)) + 1)))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    caps = [
        (resource.RLIMIT_AS, int(limits.get("memory_mb", 512)) * 1024 * 1024),
        (resource.RLIMIT_FSIZE, int(limits.get("max_file_mb", 16)) * 1024 * 1024),
        (resource.RLIMIT_NOFILE, int(limits.get("max_open_files", 256))),
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_MSGQUEUE, 0),  # no POSIX message queues: they would outlive the run
    ]
    if nproc_rlimit:
        caps.append((resource.RLIMIT_NPROC, int(limits.get("max_processes", 64))))
    for which, value in caps:
        try:
            resource.setrlimit(which, (value, value))
        except (ValueError, OSError):
            pass


def move_fd(fd):
    """Move the result pipe to a random high descriptor, so a program cannot guess where it is."""
    target = 300 + int.from_bytes(os.urandom(2), "big") % 600
    os.dup2(fd, target)
    os.close(fd)
    return target


def spare_main(req_r, out_w, err_w, res_w, nproc_rlimit):
    """A child forked ahead of time: set up, wait for the request, apply its limits, run it."""
    code = 1
    try:
        res_fd = move_fd(res_w)
        prepare_child(out_w, err_w)
        keep = sorted({req_r, res_fd})
        os.closerange(3, keep[0])
        os.closerange(keep[0] + 1, keep[1])
        os.closerange(keep[1] + 1, 4096)
        data = read_all(req_r)
        os.close(req_r)
        if not data:  # the worker dropped this spare
            code = 0
            return
        request = marshal.loads(data)  # the host's own request frame, forwarded by the worker
        apply_rlimits(request.get("limits") or {}, nproc_rlimit)
        if request.get("stdin"):
            redirect_stdin(STDIN_NAME)
        del data
        code = run_request(request, res_fd)
    except BaseException:
        code = 1
    finally:
        os._exit(code)


def read_all(fd):
    chunks: list[bytes] = []
    while True:
        chunk = os.read(fd, READ_SIZE)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def report_to(fd, payload):
    data = (dump_json(payload) + "\n").encode()
    while data:
        data = data[os.write(fd, data) :]


def run_request(request, res_fd):
    """Run one request inside the child and return its exit code. Reports go to the result pipe."""
    op = request["op"]
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    perturb = request.get("perturb")
    shifts = [None, None]  # kept alive while the program runs (see perturbation)
    try:
        program = compile(request.get("code", ""), "<program>", "exec")
        if perturb:
            shifts[0] = perturbation()
        exec(program, namespace)
        if op == "call":
            call = compile(parse_call(request.get("func", "f"), request.get("input", "")), "<input>", "eval")
            if perturb:
                shifts[1] = perturbation()
            value = eval(call, namespace)
            text = plain_repr(value)
            flush_streams()
            report_to(res_fd, {"kind": "value", "value": text})
        elif op == "tests":
            tests = compile(request.get("tests", ""), "<tests>", "exec")
            exec(tests, namespace)
            entry = request.get("entry_point")
            if entry:
                namespace["check"](namespace[entry])  # type: ignore[operator]
            flush_streams()
            report_to(res_fd, {"kind": "passed"})
        flush_streams()
        return 0
    except SystemExit as exc:
        flush_streams()
        if exc.code is None or exc.code == 0:
            return 0 if op == "exec" else 1
        if isinstance(exc.code, int):
            return exc.code & 0xFF
        sys.stderr.write(str(exc.code) + "\n")
        flush_streams()
        return 1
    except MemoryError:
        report_to(res_fd, {"kind": "memory"})
        return 1
    except BaseException as exc:
        try:
            sys.__excepthook__(type(exc), exc, exc.__traceback__)  # the C traceback printer: no imports
            flush_streams()
            message = f"{type(exc).__name__}: {str(exc)[:500]}"
        except BaseException:
            message = "program raised an exception"
        report_to(res_fd, {"kind": "exception", "type": type(exc).__name__, "error": message})
        return 1


def perturbation():
    """Objects of random counts in every small size class and from every free list (list, dict, float, tuple):
    allocated, and kept, before the program's own objects, they change where those land. Fresh forks of one
    fork server would otherwise place them identically, and id() would pass as deterministic."""
    counts = os.urandom(64)
    held = [object() for _ in range(1 + counts[0] % 16)]
    held += [(1 << 40) + i for i in range(1 + counts[1] % 16)]
    held += [[] for _ in range(1 + counts[2] % 16)]
    held += [{} for _ in range(1 + counts[3] % 16)]
    held += [i + 0.5 for i in range(1 + counts[4] % 16)]
    for length in range(1, 20):
        held += [tuple(range(length)) for _ in range(1 + counts[4 + length] % 8)]
    for index, size in enumerate(range(15, 480, 16)):  # bytes(size) takes size + 33 bytes
        held += [bytes(size) for _ in range(1 + counts[24 + index] % 16)]
    held.append(bytes(512 + 64 * counts[63]))
    return held


def flush_streams():
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass


def parse_ast(source, filename, mode):
    """ast.parse without the ast module."""
    return compile(source, filename, mode, _ast.PyCF_ONLY_AST)


def parse_call(func, text):
    """Build `func(<text>)` from the input's AST; the input must be exactly the call's argument list."""
    source = f"{func}({text})"
    tree = parse_ast(source, "<input>", "eval")
    call = tree.body
    lines = source.split("\n")
    end = (len(lines), len(lines[-1].encode("utf-8")))
    if (
        not isinstance(call, _ast.Call)
        or not isinstance(call.func, _ast.Name)
        or call.func.id != func
        or (call.lineno, call.col_offset) != (1, 0)
        or (call.end_lineno, call.end_col_offset) != end
    ):
        raise ValueError("input is not a plain argument list")
    return tree


def plain_repr(value):
    """repr() of a value made only of plain literal types (exact types, no subclasses, no cycles)."""
    seen = set()
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind not in PLAIN_TYPES:
            raise TypeError(f"output is not a plain literal value (found {kind.__name__})")
        if kind in (list, tuple, set, frozenset, dict):
            if id(item) in seen:
                raise TypeError("output contains a cycle or a shared container")
            seen.add(id(item))
            stack.extend(item.items() if kind is dict else item)
    return repr(value)


def kernel_main(limits, run_dir, ctl_r, rep_w, out_w, err_w, nproc_rlimit):
    """A session's kernel: run cells one at a time in one persistent namespace."""
    code = 0
    try:
        enter_child(limits, run_dir, None, out_w, err_w, nproc_rlimit)
        keep = {ctl_r, rep_w}
        close_all(fd for fd in range(3, 4096) if fd not in keep)
        namespace = {"__name__": "__main__", "__builtins__": builtins}
        buf = bytearray()
        count = 0
        while True:
            frame = read_frame(buf)
            if frame is None:
                chunk = os.read(ctl_r, 65536)
                if not chunk:
                    break
                buf += chunk
                continue
            del buf[: buf.find(b"\n") + 1 + len(frame)]
            count += 1
            reply = run_cell(marshal.loads(frame), namespace, count)  # from the worker: trusted
            flush_streams()
            write_frame(rep_w, dump_json(reply).encode())
    except BaseException:
        code = 1
    finally:
        os._exit(code)


def run_cell(source, namespace, count):
    """Run one cell like a notebook: the value of a final expression is printed."""
    try:
        tree = parse_ast(source, f"<cell {count}>", "exec")
        last = None
        if tree.body and isinstance(tree.body[-1], _ast.Expr):
            last = _ast.Expression(tree.body.pop().value)
        exec(compile(tree, f"<cell {count}>", "exec"), namespace)
        if last is not None:
            value = eval(compile(last, f"<cell {count}>", "eval"), namespace)
            if value is not None:
                print(repr(value))
        return {"status": "ok"}
    except SystemExit:
        return {"status": "error", "error": "SystemExit is not allowed in a session cell"}
    except MemoryError:
        return {"status": "memory", "error": "memory limit exceeded (MemoryError)"}
    except BaseException as exc:
        sys.__excepthook__(type(exc), exc, exc.__traceback__)
        return {"status": "error", "error": f"{type(exc).__name__}: {str(exc)[:500]}"}


def trim_heap():
    """Give free heap pages back to the kernel: fork copies, and exit unmaps, every page the worker has."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except Exception:
        pass


def harden():
    """No ptrace or /proc/<pid>/mem access to the worker from the programs it runs (same uid)."""
    try:
        ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE = 4
    except Exception:
        pass


WARM_UPS = {
    # Run once in the worker after its import, so every child finds sympy's lazily imported parts loaded.
    "sympy": (
        "x, y = sympy.symbols('x y')\n"
        "sympy.expand((x + 1) ** 3); sympy.factor(x ** 2 - 1)\n"
        "sympy.simplify(sympy.sin(x) ** 2 + sympy.cos(x) ** 2)\n"
        "sympy.solve(x ** 2 - 4, x); sympy.Rational(1, 3) + sympy.sqrt(8); sympy.integrate(x ** 2, x)\n"
        "sympy.diff(sympy.exp(x) * y, x); str(sympy.Matrix([[1, 2], [3, 4]]).det()); sympy.latex(x / y)\n"
        "sympy.core.cache.clear_cache()"
    ),
    "numpy": "numpy.linalg.inv(numpy.eye(3) * 2).sum(); numpy.arange(10).reshape(2, 5).mean(axis=0)",
}


def preload(names):
    """Import (and warm up) modules once in the worker, so runs get them for free."""
    for name in names:
        try:
            module = __import__(name)
            if name in WARM_UPS:
                exec(WARM_UPS[name], {name: module})
        except Exception:
            continue


def open_channel(channel):
    """The FIFOs the host made for this worker (a hop-free path past `docker attach`): (requests, replies)."""
    if not channel:
        return 0, 1
    requests = os.open(channel["requests"], os.O_RDONLY)
    replies = os.open(channel["replies"], os.O_WRONLY)
    return requests, replies


def main():
    config = load_json(sys.argv[1]) if len(sys.argv) > 1 else {}
    harden()
    # The worker's own environment (and cwd) is what children get: they set nothing up themselves.
    os.environ.clear()
    os.environ.update(CHILD_ENV)
    _signal.signal(_signal.SIGINT, _signal.SIG_DFL)
    # The worker runs with -S (no site: a smaller process forks faster), so add Debian's package dirs here.
    for path in config.get("site_dirs") or []:
        if os.path.isdir(path) and path not in sys.path:
            sys.path.append(path)
    if config.get("cpu") is not None:
        # A fork server and its children on one core: forks are several times cheaper than across cores.
        try:
            cpus = sorted(os.sched_getaffinity(0))
            os.sched_setaffinity(0, {cpus[int(config["cpu"]) % len(cpus)]})
        except (OSError, ValueError, IndexError):
            pass
    preload(config.get("preload") or [])
    make_child_streams()
    worker = Worker(config)
    worker.enter_run_dir()
    gc.collect()
    trim_heap()
    gc.freeze()  # children then never touch (and so never copy) the worker's objects when they collect
    worker.in_fd, worker.out_fd = open_channel(config.get("channel"))
    sys.stdout.buffer.write(b'{"ready": true}\n')
    sys.stdout.buffer.flush()
    worker.idle()
    worker.serve()


if __name__ == "__main__":
    main()
