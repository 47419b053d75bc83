"""``capszoo launch``: run an MXNet parameter-server job (scheduler, servers, workers).

A distributed ``capszoo train --kvstore dist_sync`` needs three kinds of
processes, told apart by ``DMLC_*`` environment variables:

* one **scheduler** (``DMLC_ROLE=scheduler``), which the others find at
  ``DMLC_PS_ROOT_URI:DMLC_PS_ROOT_PORT``; it always runs on this machine;
* ``-s`` **servers** (``DMLC_ROLE=server``), which sum the workers' gradients;
* ``-n`` **workers** (``DMLC_ROLE=worker``), which run the command.

Importing ``mxnet`` in a process whose role is scheduler or server runs that
role's loop and exits the process when the job ends, so the scheduler (and the
servers on this machine) run ``python -c "import mxnet"``, and servers on other
hosts run the command itself (as MXNet's own ``tools/launch.py`` does: it imports
mxnet first).

Locally (the default, ``--local``) every process is a child of the launcher on
127.0.0.1 (``DMLC_INTERFACE=lo``).  With ``--hosts FILE`` workers and servers are
spread round-robin over the hosts and started through ssh (``ssh -tt``, so that
closing the connection hangs up the remote process).

The launcher removes ``PORT`` from the children's environment (MXNet's
parameter server reads it as the node's own port), starts every child in its
own process group, prefixes their output with their role, forwards SIGINT and
SIGTERM, and when any process fails (non-zero exit, killed, ssh error) stops the
whole job, kills and reaps every process group it started, and raises
:class:`~capszoo.errors.DistributedError` naming the failed role and rank.
"""
from __future__ import annotations

import dataclasses
import errno
import os
import re
import selectors
import shlex
import signal
import socket
import subprocess
import sys
import time

from .errors import DistributedError

__all__ = ["Host", "Node", "parse_hosts", "plan_job", "ssh_argv", "check_port", "free_port", "check_hosts",
           "launch"]

LOCALHOST = "127.0.0.1"
#: How long the servers and the scheduler get to finish after the last worker, and the
#: workers after the servers (seconds).
SHUTDOWN_GRACE = 30.0
#: How long processes get between SIGTERM (or a forwarded signal) and SIGKILL.
KILL_GRACE = 5.0
SSH_FAILED = 255  # ssh's own exit status for connection and authentication errors


@dataclasses.dataclass(frozen=True)
class Host:
    """An entry of a host file: ``[user@]name[:ssh_port]``."""

    name: str
    ssh_port: int | None = None

    def __str__(self):
        return self.name if self.ssh_port is None else f"{self.name}:{self.ssh_port}"


@dataclasses.dataclass
class Node:
    """One process of the job: what to run, with which environment, where."""

    role: str                  # "scheduler", "server" or "worker"
    rank: int                  # index among its role (the launcher's numbering)
    argv: list                 # what is executed on this machine (the command, or ssh ... command)
    env: dict                  # its full environment on this machine
    host: Host | None = None   # None: this machine
    dmlc: dict = dataclasses.field(default_factory=dict)  # the DMLC_* variables it gets

    @property
    def label(self):
        name = "scheduler" if self.role == "scheduler" else f"{self.role} {self.rank}"
        return name if self.host is None else f"{name} on {self.host.name}"


def parse_hosts(path):
    """Read a host file: one ``[user@]host[:ssh_port]`` per line; ``#`` starts a comment.

    Raises DistributedError for an unreadable or empty file or a malformed line."""
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except OSError as exc:
        raise DistributedError(f"cannot read host file {path}: {exc.strerror or exc}") from None
    hosts = []
    for no, line in enumerate(lines, 1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        m = re.fullmatch(r"((?:[A-Za-z0-9._-]+@)?[A-Za-z0-9._-]+)(?::(\d{1,5}))?", entry)
        if not m or (m.group(2) and not 0 < int(m.group(2)) < 65536):
            raise DistributedError(f"{path}, line {no}: {entry!r} is not a host; write one [user@]host[:ssh_port] "
                                   "per line")
        hosts.append(Host(m.group(1), int(m.group(2)) if m.group(2) else None))
    if not hosts:
        raise DistributedError(f"host file {path} lists no host; write one [user@]host[:ssh_port] per line")
    return hosts


def free_port(host=LOCALHOST):
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def check_port(port, host=LOCALHOST):
    """Raise DistributedError unless the scheduler can listen on ``host:port`` (probed by binding)."""
    if not 0 < port < 65536:
        raise DistributedError(f"--port {port} is not a TCP port (1..65535)")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # like the scheduler's socket: a port in TIME_WAIT is usable, one with a listener is not
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            why = "is in use" if exc.errno == errno.EADDRINUSE else f"cannot be used ({exc.strerror})"
            raise DistributedError(f"port {port} on {host or 'this machine'} {why}: the scheduler needs it; choose "
                                   "another --port, or leave --port out to pick a free one") from None


def _scheduler_address(hosts):
    """The address of this machine that the first host reaches it by (no packet is sent)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((hosts[0].name.rpartition("@")[2], 9))
            return s.getsockname()[0]
    except OSError as exc:
        raise DistributedError(f"cannot work out this machine's address as seen from {hosts[0].name} "
                               f"({exc.strerror or exc}); pass --scheduler-host ADDRESS") from None


def ssh_argv(host, command, remote_env, *, ssh="ssh", remote_dir=None):
    """The ssh command line that runs ``command`` on ``host`` with ``remote_env`` (and no PORT)."""
    argv = shlex.split(ssh) + ["-tt", "-o", "BatchMode=yes", "-o", "ServerAliveInterval=30"]
    if host.ssh_port is not None:
        argv += ["-p", str(host.ssh_port)]
    assigns = [f"{k}={shlex.quote(str(v))}" for k, v in remote_env.items()]
    remote = "exec env -u PORT " + " ".join(assigns + [shlex.quote(a) for a in command])
    if remote_dir:
        remote = f"cd {shlex.quote(remote_dir)} && {remote}"
    return argv + [host.name, remote]


def _check_command(command):
    if not command:
        raise DistributedError("no command to run: give it after --, e.g. capszoo launch -n 2 -s 1 -- capszoo "
                               "train capsnet-mnist --kvstore dist_sync")
    # A capszoo train without a dist kvstore would run W independent trainings into one --out.
    is_capszoo = any(os.path.basename(a) in ("capszoo", "capszoo.cli") for a in command[:3])
    if is_capszoo and "train" in command:
        kv = None
        for i, a in enumerate(command):
            if a == "--kvstore" and i + 1 < len(command):
                kv = command[i + 1]
            elif a.startswith("--kvstore="):
                kv = a.split("=", 1)[1]
        if not (kv or "").startswith("dist"):
            raise DistributedError("the command trains without a distributed kvstore, so the workers would not "
                                   "cooperate: add --kvstore dist_sync (or dist_device_sync, dist_async)")


def _parse_env(items):
    env = {}
    for item in items or ():
        name, eq, value = item.partition("=")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise DistributedError(f"--env {item!r}: expected NAME=VALUE or NAME")
        if not eq:
            if name not in os.environ:
                raise DistributedError(f"--env {name}: {name} is not set here; use --env {name}=VALUE")
            value = os.environ[name]
        env[name] = value
    return env


def plan_job(command, *, num_workers, num_servers, hosts=None, port, scheduler_host=None, interface=None,
             env=None, ssh="ssh", remote_dir=None, python=None, base_env=None):
    """The job's processes: scheduler first, then servers, then workers.

    Parameters
    ----------
    command : list of str
        What every worker runs (e.g. ``["capszoo", "train", ..., "--kvstore", "dist_sync"]``).
    num_workers, num_servers : int
        At least 1 each.
    hosts : list of Host, optional
        Where servers and workers run (round-robin, through ssh); None: this machine.
    port : int
        The scheduler's port.
    scheduler_host : str, optional
        This machine's address as the hosts reach it (ssh mode; default: worked out).
    interface : str, optional
        ``DMLC_INTERFACE`` of the remote nodes (the network interface they use).
    env : dict, optional
        Extra variables for every process (forwarded through ssh too).
    """
    if not isinstance(num_workers, int) or num_workers < 1:
        raise DistributedError(f"a job needs at least 1 worker, got -n {num_workers}")
    if not isinstance(num_servers, int) or num_servers < 1:
        raise DistributedError(f"a job needs at least 1 server (it sums the gradients), got -s {num_servers}")
    _check_command(command)
    python = python or sys.executable
    base = dict(os.environ if base_env is None else base_env)
    base.pop("PORT", None)  # MXNet's parameter server would take it as this node's port
    for k in [k for k in base if k.startswith("DMLC_")]:
        del base[k]
    extra = dict(env or {})
    local = not hosts
    root = LOCALHOST if local else (scheduler_host or _scheduler_address(hosts))
    common = {"DMLC_PS_ROOT_URI": root, "DMLC_PS_ROOT_PORT": str(port),
              "DMLC_NUM_SERVER": str(num_servers), "DMLC_NUM_WORKER": str(num_workers)}
    if local:
        common.update(DMLC_INTERFACE="lo", DMLC_NODE_HOST=LOCALHOST)
    elif interface:
        common["DMLC_INTERFACE"] = interface
    serve = [python, "-c", "import mxnet"]  # importing mxnet runs the server / scheduler loop
    nodes = []
    sched = {"DMLC_ROLE": "scheduler", **common}
    if not local:
        sched.pop("DMLC_INTERFACE", None)
        sched["DMLC_NODE_HOST"] = root
    nodes.append(Node("scheduler", 0, serve, {**base, "OMP_NUM_THREADS": "1", **extra, **sched}, None, sched))
    # Local workers share this machine's cores: each gets at most cores/W OpenMP threads
    # (capszoo itself would give each all of them), servers one; --env OMP_NUM_THREADS=N wins.
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    inherited = base.get("OMP_NUM_THREADS", "")
    inherited = int(inherited) if inherited.isdigit() and int(inherited) > 0 else cores
    omp = {"worker": str(max(1, min(inherited, cores // num_workers))), "server": "1"}
    for role, count in (("server", num_servers), ("worker", num_workers)):
        for rank in range(count):
            dmlc = {"DMLC_ROLE": role, **common}
            threads = {"OMP_NUM_THREADS": omp[role]} if local else {}
            if local:
                argv = serve if role == "server" else list(command)
                nodes.append(Node(role, rank, argv, {**base, **threads, **extra, **dmlc}, None, dmlc))
            else:
                host = hosts[rank % len(hosts)]
                remote_env = {**threads, **extra, **dmlc}
                argv = ssh_argv(host, list(command), remote_env, ssh=ssh, remote_dir=remote_dir)
                nodes.append(Node(role, rank, argv, base, host, dmlc))
    return nodes


def check_hosts(hosts, *, ssh="ssh", timeout=30.0):
    """Raise DistributedError naming every host that ``ssh host true`` cannot reach."""
    procs = []
    for h in dict.fromkeys(hosts):
        argv = shlex.split(ssh) + ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={int(timeout)}"]
        if h.ssh_port is not None:
            argv += ["-p", str(h.ssh_port)]
        try:
            p = subprocess.Popen(argv + [h.name, "true"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, start_new_session=True)
        except OSError as exc:
            for _, q in procs:
                _kill_group(q.pid, signal.SIGKILL)
                q.wait()
            raise DistributedError(f"cannot run ssh ({ssh!r}): {exc.strerror or exc}") from None
        procs.append((h, p))
    bad = []
    deadline = time.monotonic() + timeout + 5
    for h, p in procs:
        try:
            _, err = p.communicate(timeout=max(0.1, deadline - time.monotonic()))
            if p.returncode != 0:
                msg = err.decode(errors="replace").strip().splitlines()
                bad.append(f"{h.name} (ssh exit status {p.returncode}{': ' + msg[-1] if msg else ''})")
        except subprocess.TimeoutExpired:
            _kill_group(p.pid, signal.SIGKILL)
            p.wait()
            bad.append(f"{h.name} (no answer within {timeout:.0f} s)")
    if bad:
        raise DistributedError("cannot reach " + "; ".join(bad) + " over ssh: check the host file, the network and "
                               "that `ssh -o BatchMode=yes HOST true` works without a password")


def _kill_group(pgid, sig):
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _describe_status(node, status, pid):
    kind, code = status
    where = f"{node.label} (pid {pid})"
    if kind == "killed":
        try:
            name = signal.Signals(code).name
        except ValueError:
            name = f"signal {code}"
        return f"{where} was killed by {name}"
    if node.host is not None and code == SSH_FAILED:
        return (f"{where}: ssh to {node.host.name} failed (exit status {SSH_FAILED}: host unreachable, ssh refused "
                "or the connection dropped)")
    return f"{where} exited with status {code}"


class _Running:
    def __init__(self, node, popen):
        self.node, self.popen, self.pid = node, popen, popen.pid
        self.status = None  # ("exited", code) or ("killed", signal)
        self.stopped_by_us = False

    def check(self):
        """Note the exit status without reaping: the pid, and so the process group, stays ours."""
        if self.status is not None:
            return self.status
        try:
            info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:  # already reaped
            rc = self.popen.poll()
            if rc is not None:
                self.status = ("killed", -rc) if rc < 0 else ("exited", rc)
            return self.status
        if info is not None and info.si_pid == self.pid:
            if info.si_code == os.CLD_EXITED:
                self.status = ("exited", info.si_status)
            else:
                self.status = ("killed", info.si_status)
        return self.status


class _Output:
    """Copies the children's stdout and stderr line by line, prefixed with their label."""

    def __init__(self, out, err):
        self.sel = selectors.DefaultSelector()
        self.out, self.err = out, err
        self.partial = {}

    def add(self, running):
        prefix = f"[{running.node.label}] "
        for pipe, stream in ((running.popen.stdout, self.out), (running.popen.stderr, self.err)):
            if pipe is not None:
                os.set_blocking(pipe.fileno(), False)
                self.sel.register(pipe, selectors.EVENT_READ, (prefix, stream))
                self.partial[pipe] = b""

    def pump(self, timeout):
        if not self.sel.get_map():
            time.sleep(timeout)
            return
        for key, _ in self.sel.select(timeout):
            self._read(key.fileobj, *key.data)

    def _read(self, pipe, prefix, stream):
        try:
            chunk = os.read(pipe.fileno(), 65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        buf = self.partial[pipe] + chunk
        lines = buf.split(b"\n")
        self.partial[pipe] = b"" if not chunk else lines.pop()
        for line in lines:
            if line or chunk:
                text = line.decode(errors="replace").replace("\r", "")
                stream.write(prefix + text + "\n")
        stream.flush()
        if not chunk:
            self.sel.unregister(pipe)
            pipe.close()

    def drain(self, timeout=1.0):
        deadline = time.monotonic() + timeout
        while self.sel.get_map() and time.monotonic() < deadline:
            self.pump(0.05)
        for key in list(self.sel.get_map().values()):
            self.sel.unregister(key.fileobj)
            key.fileobj.close()


def _run(nodes, *, timeout=None, out=None, err=None):
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr

    def say(msg):
        err.write(f"capszoo launch: {msg}\n")
        err.flush()

    running, output = [], _Output(out, err)
    received = []

    def on_signal(signum, frame):
        received.append(signum)

    old = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.signal(sig, on_signal)
    except ValueError:  # not the main thread: no forwarding
        old = {}
    failure = None
    try:
        for node in nodes:
            try:
                p = subprocess.Popen(node.argv, env=node.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, start_new_session=True)
            except OSError as exc:
                raise DistributedError(f"cannot start {node.label}: {node.argv[0]!r}: {exc.strerror or exc}") \
                    from None
            r = _Running(node, p)
            running.append(r)
            output.add(r)
            say(f"started {node.label} (pid {p.pid})")
        workers = [r for r in running if r.node.role == "worker"]
        others = [r for r in running if r.node.role != "worker"]
        start = time.monotonic()
        others_done_at = None
        forwarded_at = None
        while True:
            output.pump(0.1)
            if received and forwarded_at is None:
                sig = received[0]
                failure = f"interrupted by {signal.Signals(sig).name}; stopped the job"
                say(f"{signal.Signals(sig).name}: passing it on to the workers")
                # Servers and the scheduler, deaf to SIGINT inside MXNet's C++ loop, are stopped
                # (SIGTERM) once the workers are gone: a worker waiting for a server never returns.
                for r in workers:
                    if r.check() is None:
                        r.stopped_by_us = True
                        _kill_group(r.pid, sig)
                forwarded_at = time.monotonic()
            if forwarded_at is not None:
                if all(r.check() is not None for r in workers) or len(received) > 1 \
                        or time.monotonic() - forwarded_at > KILL_GRACE * 2:
                    break
                continue
            for r in running:
                st = r.check()
                if st is not None and st != ("exited", 0) and failure is None:
                    failure = _describe_status(r.node, st, r.pid)
            if failure:
                break
            if all(r.check() is not None for r in workers):
                say(f"all {len(workers)} worker(s) finished")
                deadline = time.monotonic() + SHUTDOWN_GRACE
                while time.monotonic() < deadline and any(r.check() is None for r in others):
                    output.pump(0.1)
                late = [r.node.label for r in others if r.check() is None]
                if late:
                    say(f"{', '.join(late)} still running {SHUTDOWN_GRACE:.0f} s after the workers finished; "
                        "stopping them")
                break
            if others_done_at is None and all(r.check() is not None for r in others):
                others_done_at = time.monotonic()
            if others_done_at is not None and time.monotonic() - others_done_at > SHUTDOWN_GRACE:
                left = ", ".join(r.node.label for r in workers if r.check() is None)
                failure = f"{left} still running {SHUTDOWN_GRACE:.0f} s after the scheduler and servers stopped"
                break
            if timeout and time.monotonic() - start > timeout:
                failure = f"the job did not finish within --timeout {timeout:g} s"
                break
    finally:
        _stop_all(running, output)
        for sig, handler in old.items():
            signal.signal(sig, handler)
    if failure:
        if "interrupted" not in failure:
            failure = f"{failure}; stopped the job ({_stopped(running)})"
        raise DistributedError(failure)
    return 0


def _stopped(running):
    return ", ".join(r.node.label for r in running if r.stopped_by_us) or "nothing else was running"


def _stop_all(running, output):
    """SIGTERM every process group, SIGKILL what is left after KILL_GRACE, reap everything."""
    alive = [r for r in running if r.check() is None]
    for r in alive:
        r.stopped_by_us = True
        _kill_group(r.pid, signal.SIGTERM)
    deadline = time.monotonic() + KILL_GRACE
    while time.monotonic() < deadline and any(r.check() is None for r in alive):
        output.pump(0.05)
    for r in running:  # also the groups of processes that exited: no grandchild survives
        _kill_group(r.pid, signal.SIGKILL)
    for r in running:
        try:
            r.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - unkillable (D state)
            pass
    output.drain()


def launch(command, *, num_workers, num_servers=1, hosts_file=None, port=None, scheduler_host=None,
           interface=None, env=None, ssh="ssh", remote_dir=None, timeout=None, dry_run=False, check=True,
           out=None, err=None):
    """Run ``command`` as the workers of a parameter-server job; return 0 when every worker succeeded.

    Raises DistributedError for bad arguments, a port in use, an unreachable host
    and a failed job (naming the process that failed; every process is stopped)."""
    hosts = parse_hosts(hosts_file) if hosts_file else None
    env = _parse_env(env)
    if not isinstance(num_workers, int) or num_workers < 1 or not isinstance(num_servers, int) or num_servers < 1:
        plan_job(list(command), num_workers=num_workers, num_servers=num_servers, port=0)  # raises
    if hosts and check and not dry_run:
        check_hosts(hosts, ssh=ssh)
    # the scheduler listens here: on 127.0.0.1 locally, else on the --scheduler-host address
    # (or, not knowing it yet, any address of this machine)
    probe = LOCALHOST if not hosts or dry_run else (scheduler_host or "")
    if port is None:
        port = free_port(probe)
    elif not dry_run:
        check_port(port, probe)
    if hosts and remote_dir is None:
        remote_dir = os.getcwd()
    nodes = plan_job(list(command), num_workers=num_workers, num_servers=num_servers, hosts=hosts, port=port,
                     scheduler_host=scheduler_host, interface=interface, env=env, ssh=ssh, remote_dir=remote_dir)
    if dry_run:
        stream = out if out is not None else sys.stdout
        for n in nodes:
            shown = n.dmlc if n.host is not None else {**n.dmlc, **{k: v for k, v in n.env.items()
                                                                    if k == "OMP_NUM_THREADS" or k in env}}
            prefix = "" if n.host is not None else " ".join(f"{k}={shlex.quote(v)}" for k, v in shown.items()) + " "
            stream.write(f"{n.label}: {prefix}{shlex.join(n.argv)}\n")
        stream.flush()
        return 0
    return _run(nodes, timeout=timeout, out=out, err=err)
