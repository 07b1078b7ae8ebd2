"""main.py launched as a user launches it, a process of its own with its own argv, folder,
environment, output files and exit status, without its ~3 s of importing torch each time: a
server process imports what main.py imports (never the project's own modules, which the
child imports itself, nor anything else) and runs nothing; each launch is a fork of it that
runs main.py as __main__ and leaves through the interpreter's own exit. A server that runs
no torch work is safe to fork, as multiprocessing's forkserver is.

    python tests/launcher.py   # the server: JSON requests on stdin, JSON replies on stdout
"""
import ast
import contextlib
import gc
import importlib
import json
import os
import runpy
import select
import signal
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAIN = os.path.join(ROOT, "main.py")


def libraries(path=MAIN, seen=None):
    """The modules outside the project that path imports at module level, and the project's
    modules it imports, and theirs."""
    seen = set() if seen is None else seen
    found = []
    for node in ast.parse(open(path).read()).body:
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
        for name in names:
            own = os.path.join(ROOT, name.split(".")[0] + ".py")
            if not os.path.exists(own):
                found.append(name)
            elif own not in seen:
                seen.add(own)
                found += libraries(own, seen)
    return found


def serve():
    """Answers requests until stdin closes; returns only in a child, with its request."""
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            return request
        reply({"pid": pid})
        reply({"status": os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])})
    sys.exit(0)


def reply(message):
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def become(request):
    """This child as `python main.py ARGS` started in request's folder and environment."""
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    for fd, (path, flags) in enumerate(((os.devnull, os.O_RDONLY),
                                        (request["stdout"], os.O_WRONLY | os.O_TRUNC),
                                        (request["stderr"], os.O_WRONLY | os.O_TRUNC))):
        opened = os.open(path, flags)
        os.dup2(opened, fd)
        os.close(opened)  # a process python starts holds 0, 1 and 2 alone
    sys.stdin = open(os.devnull)
    sys.argv = [MAIN, *request["args"]]
    sys.path[0] = ROOT


class Launcher:
    """The client. Its server imported torch in the environment it was started in, so it serves
    the calls made in that environment but for PYTEST_CURRENT_TEST, pytest's name of the test
    running, which changes test by test; each launch gets its call's environment whole."""

    def __init__(self, env):
        self.env, self.pending = env, b""
        self.errors = tempfile.NamedTemporaryFile(prefix="launcher", suffix=".err")
        self.server = subprocess.Popen([sys.executable, __file__], env=env, text=True,
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       stderr=self.errors)

    @staticmethod
    def _imported(env):
        return {k: v for k, v in env.items() if k != "PYTEST_CURRENT_TEST"}

    def serves(self, env):
        return self._imported(env) == self._imported(self.env)

    def close(self):
        self.server.stdin.close()
        self.server.wait()

    def read(self, timeout=None):
        """The server's next reply, or None after timeout seconds without one. Read from the
        pipe itself: a buffered reader may hold both replies while select waits for more."""
        while b"\n" not in self.pending:
            if not select.select([self.server.stdout], [], [], timeout)[0]:
                return None
            chunk = os.read(self.server.stdout.fileno(), 4096)
            if not chunk:
                raise RuntimeError("the launcher's server stopped: " +
                                   open(self.errors.name).read())
            self.pending += chunk
        line, self.pending = self.pending.split(b"\n", 1)
        return json.loads(line)

    def run(self, cwd, args, env, timeout):
        """subprocess.run([python, main.py, *args], capture_output=True, text=True)."""
        with tempfile.TemporaryDirectory() as tmp:
            out, err = os.path.join(tmp, "out"), os.path.join(tmp, "err")
            for path in out, err:
                open(path, "w").close()
            self.server.stdin.write(json.dumps({"cwd": str(cwd), "args": list(args),
                                                "env": env, "stdout": out,
                                                "stderr": err}) + "\n")
            self.server.stdin.flush()
            pid = self.read()["pid"]
            done = self.read(timeout)
            if done is None:
                with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
                    os.kill(pid, signal.SIGKILL)
                self.read()
            stdout, stderr = open(out).read(), open(err).read()
        # what a real launch would print as it imports: none of it may be hidden here
        imported = open(self.errors.name).read()
        if imported:
            raise RuntimeError(f"importing main.py's libraries printed: {imported}")
        if done is None:
            raise subprocess.TimeoutExpired([MAIN, *args], timeout, stdout, stderr)
        return subprocess.CompletedProcess([sys.executable, MAIN, *args], done["status"],
                                           stdout, stderr)


if __name__ == "__main__":
    for name in libraries():
        importlib.import_module(name)
    gc.freeze()  # the children's collections then never touch, and so copy, the server's pages
    become(serve())
    runpy.run_path(MAIN, run_name="__main__")
