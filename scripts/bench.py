#!/usr/bin/env python3
"""The driver behind scripts/bench.sh: see that script for usage.

Each implementation under test ("variant": ours with iptables, ours with nftables, ours
with the nftables-sets layout, the reference) gets a *worker*: a python process started under `unshare --mount --net`, so
it sits in a private "host" network namespace and a private mount namespace holding
fresh tmpfs mounts on /run and /var/lib/cni. Pods are network namespaces bind-mounted on
files in that private /run. Every bridge, veth, firewall rule, IPAM reservation,
cnitool cache entry and lock file a plugin makes therefore lives in namespaces that
disappear with the worker process, whatever way it ends: nothing is left on the machine
and the machine's own state is never seen by the plugins.

The coordinator (this script without arguments) drives the workers over pipes, one
request at a time and alternating between variants call by call, so load from elsewhere
on the machine skews every variant alike. Each plugin exec is timed inside its worker
from spawn to exit (posix_spawn; the timer adds next to nothing).
"""

import ctypes
import json
import os
import platform
import select
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time

CALL_TIMEOUT = 60.0  # seconds; no plugin call should take more than a fraction of that
PLUGIN_PATH_ENV = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


# ----------------------------------------------------------------------------------
# Worker side: runs inside its private namespaces.
# ----------------------------------------------------------------------------------

RUN = "/run/bench"
PODS = RUN + "/pods"
NETD = RUN + "/net.d"


def sh(*args, **kw):
    subprocess.run(args, check=True, stdin=subprocess.DEVNULL, **kw)


def worker_setup_mounts():
    # The namespaces come from unshare(1) with private propagation: mounts made here are
    # invisible outside. /sys is remounted so /sys/class/net shows this netns's links
    # (what `ip netns exec` does too).
    sh("mount", "-t", "tmpfs", "-o", "mode=0755", "bench-run", "/run")
    sh("mount", "-t", "sysfs", "bench-sys", "/sys")
    if os.path.isdir("/var/lib/cni"):
        sh("mount", "-t", "tmpfs", "-o", "mode=0755", "bench-cni", "/var/lib/cni")
    else:
        # No /var/lib/cni on the machine: creating one would leave a trace, so a tmpfs
        # over /var/lib (seen only here) provides the mount point.
        sh("mount", "-t", "tmpfs", "-o", "mode=0755", "bench-varlib", "/var/lib")
        os.mkdir("/var/lib/cni")
    os.makedirs(PODS)
    os.makedirs(NETD)
    sh("ip", "link", "set", "lo", "up")


def memfd(data=b""):
    fd = os.memfd_create("bench", 0)
    if data:
        os.write(fd, data)
        os.lseek(fd, 0, os.SEEK_SET)
    return fd


def read_fd(fd):
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while True:
        b = os.read(fd, 65536)
        if not b:
            break
        chunks.append(b)
    return b"".join(chunks)


class CallFailed(Exception):
    pass


def spawn(argv, env, stdin=b"", timeout=CALL_TIMEOUT):
    """Runs argv to completion; returns (milliseconds, exit code, stdout, stderr)."""
    fin, fout, ferr = memfd(stdin), memfd(), memfd()
    acts = [(os.POSIX_SPAWN_DUP2, fin, 0), (os.POSIX_SPAWN_DUP2, fout, 1),
            (os.POSIX_SPAWN_DUP2, ferr, 2)]
    try:
        t0 = time.perf_counter_ns()
        pid = os.posix_spawn(argv[0], argv, env, file_actions=acts)
        pidfd = os.pidfd_open(pid)
        try:
            ready, _, _ = select.select([pidfd], [], [], timeout)
            if not ready:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise CallFailed(f"{' '.join(argv)}: no exit after {timeout:.0f} s (killed)")
            _, status = os.waitpid(pid, 0)
            dt = (time.perf_counter_ns() - t0) / 1e6
        finally:
            os.close(pidfd)
        return dt, os.waitstatus_to_exitcode(status), read_fd(fout), read_fd(ferr)
    finally:
        for fd in (fin, fout, ferr):
            os.close(fd)


class Worker:
    """State of one variant inside its namespaces."""

    def __init__(self, bindir, conflist, cnitool):
        self.bindir = bindir
        self.conflist = conflist
        self.cnitool = cnitool
        self.net = conflist["name"]
        self.version = conflist["cniVersion"]
        self.pods = 0
        self.cache = {}  # (mode, pod) -> final ADD result (what libcni caches)
        with open(os.path.join(NETD, "10-bench.conflist"), "w") as f:
            json.dump(conflist, f)

    # --- pods ---------------------------------------------------------------------
    def ensure_pods(self, n):
        while self.pods < n:
            path = self.pod(self.pods)
            open(path, "w").close()
            sh("unshare", f"--net={path}", "true")
            self.pods += 1
        return {"pods": self.pods}

    @staticmethod
    def pod(i):
        return f"{PODS}/p{i}"

    # --- one plugin exec ----------------------------------------------------------
    def env(self, verb, cid, pod, ifname="eth0"):
        return {"CNI_COMMAND": verb, "CNI_CONTAINERID": cid, "CNI_NETNS": self.pod(pod),
                "CNI_IFNAME": ifname, "CNI_PATH": self.bindir, "PATH": PLUGIN_PATH_ENV}

    def exec_plugin(self, ptype, verb, cid, pod, conf):
        binary = os.path.join(self.bindir, ptype)
        ms, code, out, err = spawn([binary], self.env(verb, cid, pod),
                                   json.dumps(conf).encode())
        if code != 0:
            raise CallFailed(f"{ptype} {verb} {cid}: exit {code}: "
                             f"{out.decode(errors='replace')} {err.decode(errors='replace')}")
        return ms, (json.loads(out) if out.strip() else None)

    # --- the chain, as libcni runs it ---------------------------------------------
    @staticmethod
    def mappings(pod):
        return [{"hostPort": 20000 + pod, "containerPort": 80, "protocol": "tcp"}]

    def plugin_conf(self, i, prev, pod):
        p = dict(self.conflist["plugins"][i])
        p["name"] = self.net
        p["cniVersion"] = self.version
        if prev is not None:
            p["prevResult"] = prev
        caps = p.get("capabilities") or {}
        if caps.get("portMappings"):
            p["runtimeConfig"] = {"portMappings": self.mappings(pod)}
        return p

    def chain(self, verb, mode, pod):
        """One ADD or DEL of the whole list for pod; returns timings (ms) and the IPs."""
        plugins = self.conflist["plugins"]
        if mode == "cnitool":
            env = {"NETCONFPATH": NETD, "CNI_PATH": self.bindir, "PATH": PLUGIN_PATH_ENV,
                   "CAP_ARGS": json.dumps({"portMappings": self.mappings(pod)})}
            ms, code, out, err = spawn([self.cnitool, verb.lower(), self.net, self.pod(pod)],
                                       env)
            if code != 0:
                raise CallFailed(f"cnitool {verb} pod {pod}: exit {code}: "
                                 f"{out.decode(errors='replace')} {err.decode(errors='replace')}")
            res = json.loads(out) if verb == "ADD" else None
            return {"ms": ms, "ips": ips_of(res)}
        cid = f"bench-{pod:05d}"
        times = {}
        t0 = time.perf_counter_ns()
        if verb == "ADD":
            prev = None
            for i, p in enumerate(plugins):
                ms, prev = self.exec_plugin(p["type"], "ADD", cid, pod,
                                            self.plugin_conf(i, prev, pod))
                times[p["type"]] = ms
            self.cache[(mode, pod)] = prev
            ips = ips_of(prev)
        else:
            prev = self.cache.pop((mode, pod), None)
            for i in reversed(range(len(plugins))):
                p = plugins[i]
                ms, _ = self.exec_plugin(p["type"], "DEL", cid, pod,
                                         self.plugin_conf(i, prev, pod))
                times[p["type"]] = ms
            ips = []
        return {"ms": (time.perf_counter_ns() - t0) / 1e6, "plugins": times, "ips": ips}

    def batch(self, verb, mode, pods):
        """All pods' chains at once, one thread each; wall time from a common start."""
        results = [None] * len(pods)
        errors = []
        gate = threading.Event()

        def one(k, pod):
            gate.wait()
            try:
                results[k] = self.chain(verb, mode, pod)
            except Exception as e:  # reported below, after every thread ended
                errors.append(str(e))

        threads = [threading.Thread(target=one, args=(k, p)) for k, p in enumerate(pods)]
        for t in threads:
            t.start()
        t0 = time.perf_counter_ns()
        gate.set()
        deadline = time.monotonic() + CALL_TIMEOUT * 3
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        wall = (time.perf_counter_ns() - t0) / 1e6
        if any(t.is_alive() for t in threads):
            raise CallFailed(f"batch {verb}: threads still running after the deadline")
        if errors:
            raise CallFailed(f"batch {verb}: {len(errors)} failed, first: {errors[0]}")
        return {"ms": wall, "ips": [ip for r in results for ip in r["ips"]]}

    # --- host-local alone -----------------------------------------------------------
    def ipam(self, verb, i):
        conf = {"cniVersion": "1.0.0", "name": "bench-ipam",
                "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.99.0.0/16"}]],
                         "routes": [{"dst": "0.0.0.0/0"}]}}
        ms, res = self.exec_plugin("host-local", verb, f"ipam-{i:05d}", 0, conf)
        return {"ms": ms, "ips": ips_of(res)}

    # --- peak RSS ---------------------------------------------------------------------
    def rss(self, pod):
        """Peak RSS of one chain ADD, per plugin: GNU time's figure (the largest process
        of the call's tree, tools it runs included) and each process's own (ptrace)."""
        plugins = self.conflist["plugins"]
        cid = f"rss-{pod:05d}"
        out = {}
        prev = None
        for i, p in enumerate(plugins):
            conf = json.dumps(self.plugin_conf(i, prev, pod)).encode()
            binary = os.path.join(self.bindir, p["type"])
            env = self.env("ADD", cid, pod)
            _, code, res, err = spawn(["/usr/bin/time", "-f", "%M", "-o", RUN + "/rss",
                                       binary], env, conf)
            if code != 0:
                raise CallFailed(f"{p['type']} ADD (rss): {res!r} {err!r}")
            with open(RUN + "/rss") as f:
                tree = int(f.read().split()[-1])
            # Undo and redo under ptrace for the per-process figures.
            delconf = json.dumps(self.plugin_conf(i, json.loads(res), pod)).encode()
            spawn([binary], self.env("DEL", cid, pod), delconf)
            per_proc, code, res2 = traced_peak_rss([binary], env, conf)
            if code != 0:
                raise CallFailed(f"{p['type']} ADD (ptrace): exit {code}")
            prev = json.loads(res2)
            out[p["type"]] = {"tree_kib": tree, "procs": per_proc}
        conf = {"cniVersion": "1.0.0", "name": "bench-rss",
                "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.98.0.0/16"}]]}}
        per_proc, code, _ = traced_peak_rss([os.path.join(self.bindir, "host-local")],
                                            self.env("ADD", "rss-ipam", pod),
                                            json.dumps(conf).encode())
        out["host-local"] = {"tree_kib": max(k for _, k in per_proc), "procs": per_proc}
        return out


def ips_of(result):
    if not result:
        return []
    if "ips" in result:
        return [ip["address"].split("/")[0] for ip in result["ips"]]
    # 0.2.0-shaped results
    return [result[k]["ip"].split("/")[0] for k in ("ip4", "ip6") if k in result]


# ptrace, for the peak RSS of every process in a call's tree: GNU time (and wait4)
# report the largest of a process and all its descendants, which hides whether the
# plugin or the iptables binary it ran was the big one. At PTRACE_EVENT_EXIT a process
# still has its memory, so /proc/<pid>/status VmHWM is its own lifetime peak.
PTRACE_TRACEME, PTRACE_CONT, PTRACE_SETOPTIONS, PTRACE_GETEVENTMSG = 0, 7, 0x4200, 0x4201
PTRACE_O_TRACEFORK, PTRACE_O_TRACEVFORK, PTRACE_O_TRACECLONE = 0x2, 0x4, 0x8
PTRACE_O_TRACEEXEC, PTRACE_O_TRACEEXIT = 0x10, 0x40
PTRACE_EVENT_EXIT = 6
WALL = 0x40000000
_libc = None


def libc():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p,
                                 ctypes.c_void_p]
        _libc.ptrace.restype = ctypes.c_long
    return _libc


def traced_peak_rss(argv, env, stdin):
    """Runs argv traced; returns ([(command, peak KiB)] per process, exit code, stdout)."""
    lc = libc()
    fin, fout = memfd(stdin), memfd()
    pid = os.fork()
    if pid == 0:  # child: be traced, then exec (stops with SIGTRAP at the exec)
        try:
            os.dup2(fin, 0)
            os.dup2(fout, 1)
            lc.ptrace(PTRACE_TRACEME, 0, None, None)
            os.execve(argv[0], argv, env)
        finally:
            os._exit(127)
    peaks = []
    code = None
    deadline = time.monotonic() + CALL_TIMEOUT
    try:
        _, status = os.waitpid(pid, 0)
        opts = (PTRACE_O_TRACEFORK | PTRACE_O_TRACEVFORK | PTRACE_O_TRACECLONE |
                PTRACE_O_TRACEEXEC | PTRACE_O_TRACEEXIT)
        lc.ptrace(PTRACE_SETOPTIONS, pid, None, ctypes.c_void_p(opts))
        lc.ptrace(PTRACE_CONT, pid, None, None)
        while time.monotonic() < deadline:
            try:
                wpid, status = os.waitpid(-1, WALL)
            except ChildProcessError:
                break
            if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                if wpid == pid:
                    code = os.waitstatus_to_exitcode(status)
                continue
            if not os.WIFSTOPPED(status):
                continue
            sig = os.WSTOPSIG(status)
            event = status >> 16
            deliver = 0
            if event == PTRACE_EVENT_EXIT:
                try:
                    with open(f"/proc/{wpid}/status") as f:
                        st = dict(line.split(":", 1) for line in f if ":" in line)
                    # One entry per process: threads share the leader's figure.
                    if int(st["Tgid"]) == wpid:
                        peaks.append((st["Name"].strip(), int(st["VmHWM"].split()[0])))
                except (OSError, KeyError, ValueError):
                    pass
            elif event == 0 and sig not in (signal.SIGTRAP, signal.SIGSTOP):
                deliver = sig  # a real signal (Go's SIGURG preemption, SIGCHLD...)
            lc.ptrace(PTRACE_CONT, wpid, None, ctypes.c_void_p(deliver))
        else:
            os.kill(pid, signal.SIGKILL)
            raise CallFailed(f"{argv[0]}: traced run did not finish")
        return peaks, code, read_fd(fout)
    finally:
        os.close(fin)
        os.close(fout)


def kernel_floor(n):
    """What the kernel alone charges for the two kinds of teardown every DEL does, each
    timed as one `ip`/`nft` process against the same process doing a change that costs
    the kernel nothing: removing a veth (rcu_barrier in netdev_run_todo), and deleting
    an nf_tables rule (the release waits for an RCU grace period when the tool's
    netlink socket closes)."""
    env = {"PATH": PLUGIN_PATH_ENV}

    def run(*argv):
        ms, code, out, err = spawn(["/usr/bin/env", *argv], env)
        if code != 0:
            raise CallFailed(f"{' '.join(argv)}: {err.decode(errors='replace')}")
        return ms, out

    run("ip", "link", "add", "flr-br", "type", "bridge")
    run("nft", "add", "table", "ip", "flr")
    run("nft", "add", "chain", "ip", "flr", "c")
    res = {"mtu": [], "veth_del": [], "nft_add": [], "nft_del": []}
    for i in range(n):
        run("ip", "link", "add", f"flr-h{i}", "type", "veth", "peer", "name", f"flr-c{i}")
        run("ip", "link", "set", f"flr-h{i}", "master", "flr-br", "up")
        res["mtu"].append(run("ip", "link", "set", f"flr-c{i}", "mtu", "1400")[0])
        res["veth_del"].append(run("ip", "link", "del", f"flr-h{i}")[0])
        ms, out = run("nft", "--echo", "--handle", "add", "rule", "ip", "flr", "c",
                      "ip", "saddr", f"10.0.{i // 256}.{i % 256}", "accept")
        res["nft_add"].append(ms)
        handle = out.decode().rsplit("handle", 1)[-1].strip()
        res["nft_del"].append(run("nft", "delete", "rule", "ip", "flr", "c", "handle",
                                  handle)[0])
    run("nft", "delete", "table", "ip", "flr")
    run("ip", "link", "del", "flr-br")
    return {k: statistics.median(v) for k, v in res.items()}


def worker_main(spec):
    worker_setup_mounts()
    w = Worker(spec["bindir"], spec["conflist"], spec.get("cnitool"))
    print(json.dumps({"ok": True, "ready": True}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        op = req.pop("op")
        try:
            if op == "pods":
                rep = w.ensure_pods(req["n"])
            elif op == "chain":
                rep = w.chain(req["verb"], req["mode"], req["pod"])
            elif op == "batch":
                rep = w.batch(req["verb"], req["mode"], req["pods"])
            elif op == "ipam":
                rep = w.ipam(req["verb"], req["i"])
            elif op == "rss":
                rep = w.rss(req["pod"])
            elif op == "floor":
                rep = kernel_floor(req["n"])
            elif op == "true":
                rep = {"ms": spawn(["/bin/true"], {})[0]}
            elif op == "shell":  # diagnostics (rule counts) inside the private node
                r = subprocess.run(req["argv"], capture_output=True, text=True,
                                   stdin=subprocess.DEVNULL, timeout=CALL_TIMEOUT)
                rep = {"rc": r.returncode, "out": r.stdout}
            else:
                raise CallFailed(f"unknown op {op}")
            rep["ok"] = True
        except Exception as e:
            rep = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        print(json.dumps(rep), flush=True)


# ----------------------------------------------------------------------------------
# Coordinator side.
# ----------------------------------------------------------------------------------

def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Remote:
    """A worker process seen from the coordinator."""

    def __init__(self, label, spec):
        self.label = label
        self.proc = subprocess.Popen(
            ["unshare", "--mount", "--net", "--propagation", "private", sys.executable,
             os.path.abspath(__file__), "--worker", json.dumps(spec)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self._read()

    def _read(self):
        ready, _, _ = select.select([self.proc.stdout], [], [], CALL_TIMEOUT * 4)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            raise SystemExit(f"{self.label}: worker gave no answer (exit {self.proc.poll()})")
        rep = json.loads(line)
        if not rep.pop("ok"):
            raise SystemExit(f"{self.label}: {rep['error']}")
        return rep

    def __call__(self, op, **kw):
        self.proc.stdin.write(json.dumps(dict(kw, op=op)) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def stats(xs):
    xs = sorted(xs)
    if not xs:
        return None
    p95 = xs[min(len(xs) - 1, max(0, -(-len(xs) * 95 // 100) - 1))]
    return {"median": statistics.median(xs), "p95": p95, "n": len(xs)}


def with_subnet(conflist, subnet):
    c = json.loads(json.dumps(conflist))
    for p in c["plugins"]:
        if "ipam" in p:
            p["ipam"]["ranges"] = [[{"subnet": subnet}]]
    return c


def machine():
    def first(path, key):
        try:
            with open(path) as f:
                for line in f:
                    if line.startswith(key):
                        return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return "?"

    def version(argv):
        try:
            return subprocess.run(argv, capture_output=True, text=True,
                                  timeout=10).stdout.strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "?"

    mem = int(first("/proc/meminfo", "MemTotal").split()[0]) // 1024
    try:
        with open("/etc/os-release") as f:
            osr = dict(line.rstrip().split("=", 1) for line in f if "=" in line)
        distro = osr.get("PRETTY_NAME", "?").strip('"')
    except OSError:
        distro = "?"
    return [
        f"CPU: {first('/proc/cpuinfo', 'model name')}, {os.cpu_count()} cores; {mem} MiB RAM",
        f"OS: {distro}, kernel {platform.release()}",
        f"Tools: {version(['iptables', '-V'])}; {version(['nft', '--version'])}",
    ]


class Bench:
    def __init__(self, args):
        self.a = args
        self.variants = []  # (key, label, bindir, conflist file)
        conf = args["conf_dir"]
        self.variants.append(("ours-ipt", "ours (iptables)", args["ours"],
                              os.path.join(conf, "10-bridge.conflist")))
        self.variants.append(("ours-nft", "ours (nftables)", args["ours"],
                              os.path.join(conf, "10-bridge-nftables.conflist")))
        self.variants.append(("ours-sets", "ours (nftables-sets)", args["ours"],
                              os.path.join(conf, "10-bridge-nftables-sets.conflist")))
        if args["ref"]:
            self.variants.append(("ref", "reference (iptables)", args["ref"],
                                  os.path.join(conf, "10-bridge.conflist")))
        self.res = {}  # (variant key, measurement) -> value
        self.remotes = []

    def start(self, subnet=None):
        rs = {}
        for key, label, bindir, path in self.variants:
            with open(path) as f:
                conflist = json.load(f)
            if subnet:
                conflist = with_subnet(conflist, subnet)
            if conflist["cniVersion"] == "1.1.0":
                # cnitool's libcni (1.1) refuses 1.1.0 results; nothing measured here
                # differs between 1.0.0 and 1.1.0.
                conflist["cniVersion"] = "1.0.0"
            spec = {"bindir": bindir, "conflist": conflist, "cnitool": self.a["cnitool"]}
            r = Remote(label, spec)
            self.remotes.append(r)
            rs[key] = r
        return rs

    def stop(self, rs):
        for r in rs.values():
            r.close()
            self.remotes.remove(r)

    def interleaved(self, rs, n, fn):
        """fn(remote, i) for i in range(n), alternating between variants per i."""
        out = {k: [] for k in rs}
        for i in range(n):
            for k, r in rs.items():
                out[k].append(fn(r, i))
        return out

    def run(self):
        a = self.a
        pods, conc = a["pods"], a["concurrency"]
        rs = self.start()
        for r in rs.values():
            r("pods", n=max(pods, conc))
        self.res["true"] = stats([rs["ours-ipt"]("true")["ms"] for _ in range(50)])

        modes = ["direct"] + (["cnitool"] if a["cnitool"] else [])
        for mode in modes:
            log(f"full chain through {mode}: {pods} ADDs, then {pods} DELs per variant")
            for verb in ("ADD", "DEL"):
                got = self.interleaved(rs, pods, lambda r, i: r("chain", verb=verb,
                                                                mode=mode, pod=i))
                for k, reps in got.items():
                    self.res[(k, f"chain-{mode}", verb)] = stats([x["ms"] for x in reps])
                    for pt in ("bridge", "portmap"):
                        xs = [x["plugins"][pt] for x in reps if pt in x.get("plugins", {})]
                        if xs:
                            self.res[(k, f"plugin-{pt}", verb)] = stats(xs)
                    if verb == "ADD":
                        ips = [ip for x in reps for ip in x["ips"]]
                        self.check_distinct(k, f"{mode} ADD", ips, pods)
                if verb == "ADD" and mode == "direct":
                    self.count_rules(rs, f"after {pods} ADDs")

        log(f"host-local alone: {pods} ADDs, then {pods} DELs per variant")
        for verb in ("ADD", "DEL"):
            got = self.interleaved(rs, pods, lambda r, i: r("ipam", verb=verb, i=i))
            for k, reps in got.items():
                self.res[(k, "plugin-host-local", verb)] = stats([x["ms"] for x in reps])

        log(f"{conc} concurrent chains, {a['rounds']} rounds per variant")
        for rnd in range(a["rounds"]):
            for verb in ("ADD", "DEL"):
                for k, r in rs.items():
                    rep = r("batch", verb=verb, mode="direct", pods=list(range(conc)))
                    self.res.setdefault((k, "concurrent", verb), []).append(rep["ms"])
                    if verb == "ADD":
                        self.check_distinct(k, f"concurrent ADD round {rnd}", rep["ips"], conc)

        log("kernel floor: veth removal and nf_tables deletion against no-op changes")
        self.res["floor"] = rs["ours-ipt"]("floor", n=min(pods, 30))
        log("peak RSS of one chain ADD per plugin")
        for k, r in rs.items():
            self.res[(k, "rss")] = r("rss", pod=0)
        self.stop(rs)

        step, top = a["scale_step"], a["scale_max"]
        log(f"scale: ADD in steps of {step} up to {top} pods (/16), then DEL down to 0")
        rs = self.start(subnet="10.244.0.0/16")
        for k in rs:
            self.res[(k, "scale")] = {"ADD": [], "DEL": []}
        for lo in range(0, top, step):
            for r in rs.values():
                r("pods", n=lo + step)
            got = self.interleaved(rs, step, lambda r, i: r("chain", verb="ADD",
                                                            mode="direct", pod=lo + i))
            for k, reps in got.items():
                self.res[(k, "scale")]["ADD"].append((lo + step, stats([x["ms"] for x in reps])))
            log(f"  {lo + step} pods present")
        self.count_rules(rs, f"with {top} pods")
        for hi in range(top, 0, -step):
            got = self.interleaved(rs, step, lambda r, i: r("chain", verb="DEL",
                                                            mode="direct", pod=hi - 1 - i))
            for k, reps in got.items():
                self.res[(k, "scale")]["DEL"].append((hi, stats([x["ms"] for x in reps])))
        self.stop(rs)

    def check_distinct(self, k, what, ips, expect):
        if len(ips) < expect or len(set(ips)) != len(ips):
            raise SystemExit(f"{k}: {what}: {len(ips)} addresses for {expect} pods, "
                             f"{len(set(ips))} distinct")

    def count_rules(self, rs, when):
        for k, r in rs.items():
            ipt = r("shell", argv=["iptables-save", "-t", "nat"])["out"]
            nft = r("shell", argv=["nft", "list", "ruleset"])["out"]
            n_ipt = sum(1 for line in ipt.splitlines() if line.startswith("-A "))
            n_nft = sum(1 for line in nft.splitlines() if line.strip() and not
                        line.strip().startswith(("table", "chain", "type", "}", "policy")))
            self.res[(k, "rules", when)] = (n_ipt, n_nft)

    # --- report -------------------------------------------------------------------
    def report(self):
        a, res = self.a, self.res
        keys = [v[0] for v in self.variants]
        labels = {v[0]: v[1] for v in self.variants}
        have_ref = "ref" in keys
        lines = []
        w = lines.append
        w("## Machine")
        w("")
        for m in machine():
            w(f"- {m}")
        w(f"- Process start (posix_spawn of /bin/true, median): {res['true']['median']:.2f} ms")
        w(f"- Ours: `{a['ours']}`; reference: "
          f"{'`' + a['ref'] + '` (Debian containernetworking-plugins ' + a['ref_version'] + ')' if have_ref else 'not installed'}"
          f"; cnitool: {'`' + a['cnitool'] + '`' if a['cnitool'] else 'not found (direct exec only)'}")
        w("")
        w(f"Milliseconds, spawn to exit. {a['pods']} pods per figure; "
          f"the ratio is reference / ours (higher is better for ours; the target is >= 8).")
        w("")
        hdr = "| measurement | " + " | ".join(labels[k] for k in keys)
        sep = "|---|" + "---:|" * len(keys)
        ours_keys = [k for k in keys if k != "ref"]
        if have_ref:
            hdr += "".join(f" | ref / {labels[k]}" for k in ours_keys)
            sep += "---:|" * len(ours_keys)
        w(hdr + " |")
        w(sep)

        def ratio(ref, ours):
            return f"{ref / ours:.1f}x" if ref and ours else "-"

        def row(label, getter, fmt):
            vals = {k: getter(k) for k in keys}
            cells = [fmt(vals[k]) if vals[k] is not None else "-" for k in keys]
            line = f"| {label} | " + " | ".join(cells)
            if have_ref:
                r = vals["ref"]
                line += "".join(f" | {ratio(num(r), num(vals[k]))}" for k in ours_keys)
            w(line + " |")

        def num(v):
            if v is None:
                return None
            return v["median"] if isinstance(v, dict) else v

        def med_p95(v):
            return f"{v['median']:.2f} (p95 {v['p95']:.2f})"

        modes = ["direct"] + (["cnitool"] if a["cnitool"] else [])
        for mode in modes[::-1]:
            for verb in ("ADD", "DEL"):
                row(f"full chain {verb}, {'cnitool' if mode == 'cnitool' else 'direct exec'}",
                    lambda k: res.get((k, f"chain-{mode}", verb)), med_p95)
        for pt, what in (("bridge", "bridge (+ host-local, ipMasq)"),
                         ("portmap", "portmap (1 host port)"), ("host-local", "host-local alone")):
            for verb in ("ADD", "DEL"):
                row(f"{what} {verb}", lambda k: res.get((k, f"plugin-{pt}", verb)), med_p95)
        for verb in ("ADD", "DEL"):
            row(f"{a['concurrency']} concurrent chain {verb}s, batch wall (median of {a['rounds']})",
                lambda k: statistics.median(res[(k, "concurrent", verb)]),
                lambda v: f"{v:.1f}")
        for verb in ("ADD", "DEL"):
            def growth(k, verb=verb):
                curve = res[(k, "scale")][verb]
                first = min(curve)[1]["median"]
                last = max(curve)[1]["median"]
                return {"first": first, "last": last, "median": last}
            row(f"scale: {verb} median at {a['scale_step']} -> {a['scale_max']} pods (growth)",
                lambda k: growth(k),
                lambda v: f"{v['first']:.2f} -> {v['last']:.2f} ({v['last'] / v['first']:.2f}x)")
        for pt in ("bridge", "portmap", "host-local"):
            row(f"peak RSS KiB, {pt} ADD: whole tree (own)",
                lambda k: rss_of(res[(k, "rss")], pt),
                lambda v: f"{v['tree']} ({v['own']})")
        for pt in ("bridge", "portmap", "host-local"):
            row(f"binary size KiB, {pt}",
                lambda k: os.stat(os.path.join(self.bindir(k), pt)).st_size / 1024,
                lambda v: f"{v:.0f}")
        w("")
        w("RSS: `/usr/bin/time` reports the largest process of a call's tree (the plugin, "
          "the IPAM plugin it runs, iptables-restore/nft); in brackets the plugin's own peak "
          "(VmHWM at exit, under ptrace). Other processes seen:")
        w("")
        for k in keys:
            seen = {}
            for pt, v in res[(k, "rss")].items():
                for name, kib in v["procs"]:
                    seen[name] = max(seen.get(name, 0), kib)
            w(f"- {labels[k]}: " + ", ".join(f"{n} {kib} KiB" for n, kib in sorted(seen.items())))
        w("")
        fl = res["floor"]
        w("Kernel floor, measured in the same run (median ms of one `ip`/`nft` process "
          "each): removing a veth from a bridge "
          f"{fl['veth_del']:.2f} against {fl['mtu']:.2f} for setting its MTU, so "
          f"**{fl['veth_del'] - fl['mtu']:.1f} ms** of every bridge DEL is the kernel's "
          "`rcu_barrier()` in `netdev_run_todo`; deleting an nf_tables rule "
          f"{fl['nft_del']:.2f} against {fl['nft_add']:.2f} for adding one, so "
          f"**{fl['nft_del'] - fl['nft_add']:.1f} ms** is the RCU grace period that "
          "the release of any deletion waits for when the committing process closes its "
          "netfilter socket. Both are paid by the reference too.")
        w("")
        w(f"Rules in the private node (iptables nat `-A` lines / nft rule lines):")
        w("")
        whens = sorted({key[2] for key in res if isinstance(key, tuple) and len(key) == 3
                        and key[1] == "rules"})
        for when in whens:
            w(f"- {when}: " + "; ".join(f"{labels[k]} {res[(k, 'rules', when)][0]} / "
                                         f"{res[(k, 'rules', when)][1]}" for k in keys))
        w("")
        w(f"### Scale curve (bridge + host-local /16 + portmap, direct exec, median ms)")
        w("")
        w("ADD: median of the ADDs that brought the node to N pods; DEL: of the DELs that "
          "took it down from N.")
        w("")
        w("| pods | " + " | ".join(f"{labels[k]} ADD | DEL" for k in keys) + " |")
        w("|---:|" + "---:|---:|" * len(keys))
        curves = {k: (dict(res[(k, "scale")]["ADD"]), dict(res[(k, "scale")]["DEL"]))
                  for k in keys}
        for n in sorted(curves[keys[0]][0]):
            w(f"| {n} | " + " | ".join(f"{curves[k][0][n]['median']:.2f} | "
                                       f"{curves[k][1][n]['median']:.2f}" for k in keys) + " |")
        return "\n".join(lines) + "\n"

    def bindir(self, k):
        return next(v[2] for v in self.variants if v[0] == k)


def rss_of(r, pt):
    v = r.get(pt)
    if not v:
        return None
    own = max((kib for name, kib in v["procs"] if name == pt[:15]), default=0)
    return {"tree": v["tree_kib"], "own": own, "median": own}


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        worker_main(json.loads(sys.argv[2]))
        return
    args = json.loads(sys.argv[1])
    bench = Bench(args)

    def on_signal(signum, _frame):
        raise SystemExit(f"interrupted by signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    t0 = time.monotonic()
    try:
        bench.run()
    finally:
        for r in list(bench.remotes):
            r.close()
    out = bench.report()
    out += f"\nRun took {time.monotonic() - t0:.0f} s.\n"
    sys.stdout.write(out)
    if args.get("out"):
        with open(args["out"], "w") as f:
            f.write(out)


if __name__ == "__main__":
    main()
