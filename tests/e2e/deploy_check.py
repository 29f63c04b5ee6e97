"""Checks of deploy/: the systemd unit, the Kubernetes manifests and the
Containerfile, against each other, the daemon's config files and the built
binaries.

  systemd     `systemd-analyze verify` passes on the unit, alone and with the
              GPU drop-in; `systemd-analyze security` rates it below a
              threshold; the unit agrees with config/traind.yaml (the config it
              starts with: socket under RuntimeDirectory, state under
              StateDirectory, TimeoutStopSec above stop_timeout_sec), has its
              hardening, and the sysusers file declares its user.
  kubernetes  every manifest validates strictly against the official schemas
              (kubernetes-validate, offline, several Kubernetes versions);
              the kustomization lists exactly the manifests in its directory;
              probes, containerPort, Services and the ConfigMap's TCP listen
              port agree; terminationGracePeriodSeconds exceeds
              stop_timeout_sec; mounts cover the config's paths; the Job's
              command is one trainctl accepts and its job file is
              config/jobs/mnist_mlp.yaml.
  daemon      traind starts with both config files (and refuses a bad one).
  container   the Containerfile builds with scripts/setup and scripts/build,
              installs the Debian packages the built binaries link against,
              and runs as the user the manifests expect.

Every consistency check is also run on a broken copy of its input and must
then fail, so a check that can no longer fail is itself a failure.

Usage: deploy_check.py --source-dir DIR --traind BIN [--trainctl BIN]
         [--systemd-analyze BIN] [--kubernetes-validate BIN]
kubernetes-validate comes from PyPI; scripts/setup installs it into
SOURCE_DIR/.venv.
Exit status: 0 all passed, 1 a check failed, 77 a tool was missing (and
CI is not "true") but everything that ran passed.
"""
import argparse
import copy
import glob
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback

import yaml

SKIP = 77
# Kubernetes versions the manifests must be valid for: the oldest supported
# here (native gRPC probes are GA since 1.27) and a recent one.
K8S_VERSIONS = ("1.29.0", "1.33.0")
# systemd-analyze security's overall exposure, times 10 (2.5 = "OK").
EXPOSURE_THRESHOLD = 25
DEFAULT_STOP_TIMEOUT = 60  # config.proto: stop_timeout_sec 0 means 60
GPU_NODES = ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia-modeset")
# Libraries every Debian image has.
BASE_PACKAGES = {"libc6", "libgcc-s1", "libstdc++6"}
# CUDA libraries when the toolkit is not a Debian package (/usr/local/cuda):
# the package of NVIDIA's repository that provides them.
CUDA_LIB_PACKAGES = (("libcudart", "cuda-cudart-"), ("libcublasLt", "libcublas-"),
                     ("libcublas", "libcublas-"), ("libcudnn", "libcudnn9-cuda-"),
                     ("libnccl", "libnccl2"))


class Failure(Exception):
    pass


class Missing(Exception):
    """A tool the check needs is not installed."""


def check(cond, msg, *a):
    if not cond:
        raise Failure(msg % a if a else msg)


def in_ci():
    return os.environ.get("CI") == "true"


def run(argv, timeout=120, **kw):
    return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout, **kw)


def load_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


# ------------------------------------------------------------------ systemd


def parse_unit(text):
    """{section: [(key, value), ...]} of a unit file or drop-in."""
    out, section, pending = {}, None, ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            out.setdefault(section, [])
            continue
        check(section is not None and "=" in line, "unit line outside a section: %r", line)
        k, v = line.split("=", 1)
        out[section].append((k.strip(), v.strip()))
    return out


def unit_values(unit, key, section="Service"):
    return [v for k, v in unit.get(section, []) if k == key]


def unit_value(unit, key, section="Service"):
    """The effective value of a single-valued setting (the last one)."""
    vals = unit_values(unit, key, section)
    return vals[-1] if vals else None


def unit_list(unit, key, section="Service"):
    """A list setting: words accumulated, an empty assignment resets."""
    words = []
    for v in unit_values(unit, key, section):
        words = [] if v == "" else words + v.split()
    return words


def systemd_seconds(v):
    """systemd time span ("90", "90s", "1min 30s", "2m") in seconds."""
    units = {"": 1, "s": 1, "sec": 1, "second": 1, "seconds": 1, "m": 60, "min": 60,
             "minute": 60, "minutes": 60, "h": 3600, "hr": 3600, "hour": 3600, "hours": 3600,
             "ms": 0.001, "msec": 0.001}
    check(v is not None and v.strip() and v != "infinity", "not a finite time span: %r", v)
    total, pos = 0.0, 0
    for m in re.finditer(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)", v):
        check(m.start() == pos and m.group(2) in units, "bad time span %r", v)
        total += float(m.group(1)) * units[m.group(2)]
        pos = m.end()
    check(pos == len(v), "bad time span %r", v)
    return total


def stop_timeout(cfg):
    return cfg.get("stop_timeout_sec") or DEFAULT_STOP_TIMEOUT


def check_unit(unit, gpu, sysusers, cfg):
    """The unit against its config (config/traind.yaml), the sysusers file and
    the hardening it must keep."""
    s = lambda k: unit_value(unit, k)
    check(s("Type") == "notify", "Type=%s, want notify (traind sends READY=1)", s("Type"))
    check(s("NotifyAccess") == "main", "NotifyAccess=%s, want main", s("NotifyAccess"))
    check(s("WatchdogSec") and systemd_seconds(s("WatchdogSec")) > 0, "no WatchdogSec")
    argv = shlex.split(s("ExecStart") or "")
    check(argv[:2] == ["/usr/bin/traind", "serve"], "ExecStart=%s, want /usr/bin/traind serve ...",
          s("ExecStart"))
    check("--config" in argv and argv[argv.index("--config") + 1] == "/etc/traind/traind.yaml",
          "ExecStart does not read /etc/traind/traind.yaml")
    check(unit_list(unit, "ConfigurationDirectory") == ["traind"],
          "ConfigurationDirectory=%s, want traind", unit_list(unit, "ConfigurationDirectory"))
    check(re.fullmatch(r"/bin/kill -HUP \$MAINPID", s("ExecReload") or ""),
          "ExecReload=%s, want /bin/kill -HUP $MAINPID", s("ExecReload"))
    stop = systemd_seconds(s("TimeoutStopSec"))
    check(stop > stop_timeout(cfg),
          "TimeoutStopSec=%s does not exceed the config's stop_timeout_sec (%s s): SIGKILL would "
          "cut the checkpoints short", s("TimeoutStopSec"), stop_timeout(cfg))
    check(s("KillMode") == "mixed", "KillMode=%s, want mixed (SIGTERM to traind, SIGKILL to all)",
          s("KillMode"))
    check(s("Restart") == "on-failure", "Restart=%s, want on-failure", s("Restart"))

    # Paths: the socket, the state and the data roots.
    check(s("User") == "traind" and s("Group") == "traind", "User/Group are not traind")
    check(re.search(r"^u\s+traind\s", sysusers, re.M), "the sysusers file does not declare traind")
    runtime = unit_list(unit, "RuntimeDirectory")
    state = unit_list(unit, "StateDirectory")
    socks = [a[len("unix:"):] for a in cfg.get("listen", []) if a.startswith("unix:")]
    check(socks, "config/traind.yaml has no unix: listen address")
    for p in socks:
        check(any(os.path.dirname(p) == "/run/" + d for d in runtime),
              "socket %s is not in a RuntimeDirectory (%s)", p, runtime)
    check(cfg.get("state_dir") in ["/var/lib/" + d for d in state],
          "state_dir %s is not a StateDirectory (%s)", cfg.get("state_dir"), state)
    for d in cfg.get("data_dirs", []):
        if d.startswith("/var/lib/"):
            check(d[len("/var/lib/"):] in state, "data dir %s is not created by StateDirectory=",
                  d)

    # Hardening.
    want = {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
            "PrivateTmp": "yes", "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes",
            "ProtectKernelLogs": "yes", "ProtectControlGroups": "yes",
            "RestrictNamespaces": "yes", "LockPersonality": "yes",
            "SystemCallArchitectures": "native", "CapabilityBoundingSet": "",
            "DevicePolicy": "closed"}
    for k, v in want.items():
        check(s(k) == v, "%s=%s, want %r", k, s(k), v)
    check(sorted(unit_list(unit, "RestrictAddressFamilies")) == ["AF_INET", "AF_INET6", "AF_UNIX"],
          "RestrictAddressFamilies=%s", unit_list(unit, "RestrictAddressFamilies"))
    # CUDA needs writable+executable memory.
    check(s("MemoryDenyWriteExecute") in (None, "no", "false"),
          "MemoryDenyWriteExecute is on: the CUDA runtime cannot run under it")
    check(s("PrivateDevices") in (None, "no", "false"),
          "PrivateDevices is on: it hides /dev/nvidia* from the GPU drop-in")

    # The GPU drop-in opens every NVIDIA node.
    allow = {}
    for v in unit_values(gpu, "DeviceAllow"):
        w = v.split()
        allow[w[0]] = w[1] if len(w) > 1 else "rwm"
    for node in GPU_NODES:
        check("rw" in allow.get(node, ""), "gpu.conf: no DeviceAllow=%s rw", node)
    check("rw" in allow.get("char-nvidia-frontend", ""),
          "gpu.conf: no DeviceAllow=char-nvidia-frontend rw (/dev/nvidia0..N)")
    check("rw" in allow.get("char-nvidia-uvm", ""), "gpu.conf: no DeviceAllow=char-nvidia-uvm rw")


def unit_for_verify(unit_text, traind, tmp, dropin=None):
    """A copy of the unit whose ExecStart runs the built traind: verify
    refuses a unit whose ExecStart binary does not exist, and /usr/bin/traind
    is not installed where the tests run. Returns the copy's path."""
    d = tempfile.mkdtemp(dir=tmp)
    text, n = re.subn(r"^ExecStart=/usr/bin/traind\b", "ExecStart=" + traind, unit_text,
                      flags=re.M)
    check(n == 1, "the unit has no ExecStart=/usr/bin/traind line")
    path = os.path.join(d, "traind.service")
    with open(path, "w") as f:
        f.write(text)
    if dropin is not None:
        os.mkdir(path + ".d")
        with open(os.path.join(path + ".d", "gpu.conf"), "w") as f:
            f.write(dropin)
    return path


def systemd_verify(tool, path):
    """systemd-analyze verify must pass and print nothing: unknown or
    misspelled settings are only warnings (exit 0) but are errors here."""
    r = run([tool, "verify", "--man=no", path])
    check(r.returncode == 0 and not r.stdout.strip(),
          "systemd-analyze verify %s (exit %d):\n%s", os.path.basename(path), r.returncode,
          r.stdout)


def systemd_security(tool, path):
    r = run([tool, "security", "--offline=true", "--threshold=%d" % EXPOSURE_THRESHOLD, path])
    overall = re.findall(r"Overall exposure level for .*", r.stdout)
    check(r.returncode == 0, "systemd-analyze security: exposure above %.1f: %s",
          EXPOSURE_THRESHOLD / 10, overall[-1] if overall else r.stdout[-2000:])


# ------------------------------------------------------------------ kubernetes


def kubernetes_validate(tool, files):
    """Strict validation of every document of every file, for each version.
    A document whose kind has no schema is only a warning to the tool (and
    would pass with a misspelt kind), so every document must be reported as
    passed and nothing else may be reported."""
    n_docs = sum(len(load_docs(f)) for f in files)
    for v in K8S_VERSIONS:
        r = run([tool, "--strict", "-k", v] + list(files))
        passed = [l for l in r.stdout.splitlines() if l.startswith("INFO") and " passed " in l]
        other = [l for l in r.stdout.splitlines() if l.strip() and l not in passed]
        check(r.returncode == 0 and not other and len(passed) == n_docs,
              "kubernetes-validate --strict -k %s (exit %d, %d of %d documents passed):\n%s", v,
              r.returncode, len(passed), n_docs, r.stdout)


KUSTOMIZATION_KEYS = {
    "apiVersion", "kind", "metadata", "resources", "namespace", "namePrefix", "nameSuffix",
    "labels", "commonLabels", "commonAnnotations", "images", "configMapGenerator",
    "secretGenerator", "generatorOptions", "patches", "replicas", "components",
    "buildMetadata", "openapi", "replacements", "sortOptions", "crds", "helmCharts",
}


def check_kustomization(kust, k8s_dir, files):
    """The kustomization is well-formed and lists exactly the manifests in
    its directory. files: the *.yaml/*.yml names there."""
    check(kust.get("apiVersion") == "kustomize.config.k8s.io/v1beta1" and
          kust.get("kind") == "Kustomization", "kustomization.yaml: not a v1beta1 Kustomization")
    unknown = set(kust) - KUSTOMIZATION_KEYS
    check(not unknown, "kustomization.yaml: unknown keys %s", sorted(unknown))
    res = kust.get("resources") or []
    check(len(res) == len(set(res)), "kustomization.yaml lists a file twice")
    for r in res:
        check("/" not in r and os.path.isfile(os.path.join(k8s_dir, r)),
              "kustomization.yaml lists %s, which is not a file in %s", r, k8s_dir)
    manifests = sorted(f for f in files if f not in ("kustomization.yaml", "kustomization.yml"))
    check(sorted(res) == manifests, "kustomization.yaml lists %s; the directory has %s",
          sorted(res), manifests)


def by_kind(objs, kind):
    return [o for o in objs if o.get("kind") == kind]


def one(objs, kind, name=None):
    found = [o for o in by_kind(objs, kind) if name is None or o["metadata"]["name"] == name]
    check(len(found) == 1, "want one %s%s, found %d", kind, " " + name if name else "",
          len(found))
    return found[0]


def listen_port(cfg):
    tcp = [a for a in cfg.get("listen", []) if not a.startswith("unix")]
    check(len(tcp) == 1, "the daemon config should have one TCP listen address, has %s", tcp)
    host, _, port = tcp[0].rpartition(":")
    check(host and port.isdigit(), "bad TCP listen address %r", tcp[0])
    return int(port)


def container_port(c, ref):
    for p in c.get("ports", []):
        if ref == p.get("name") or ref == p.get("containerPort"):
            return p["containerPort"]
    raise Failure("container %s has no port %r" % (c["name"], ref))


def mount_of(pod, c, path):
    """The (mount, volume) that provides `path` in container c: the deepest
    mount path above it."""
    best = None
    for m in c.get("volumeMounts", []):
        mp = m["mountPath"].rstrip("/")
        if path == mp or path.startswith(mp + "/"):
            if best is None or len(mp) > len(best["mountPath"].rstrip("/")):
                best = m
    check(best is not None, "nothing is mounted at %s (the root file system is read-only)", path)
    vols = [v for v in pod.get("volumes", []) if v["name"] == best["name"]]
    return best, vols[0] if vols else None


def check_manifests(objs, kust, uid, job_file):
    """The objects (all documents of the kustomization's resources) against
    each other; uid: the image's user; job_file: config/jobs/mnist_mlp.yaml,
    parsed."""
    ns = kust.get("namespace")
    if by_kind(objs, "Namespace"):
        check(one(objs, "Namespace")["metadata"]["name"] == ns,
              "the Namespace is not the kustomization's namespace %s", ns)
    for o in objs:
        check(o["metadata"].get("namespace") in (None, ns), "%s %s sets another namespace",
              o["kind"], o["metadata"]["name"])

    sts = one(objs, "StatefulSet")
    spec = sts["spec"]
    check(spec.get("replicas") == 1, "the StatefulSet must have 1 replica (one owner of the state)")
    pod = spec["template"]["spec"]
    check(len(pod["containers"]) == 1, "one container expected in the traind pod")
    c = pod["containers"][0]
    labels = spec["template"]["metadata"]["labels"]
    check(all(labels.get(k) == v for k, v in spec["selector"]["matchLabels"].items()),
          "the StatefulSet's selector does not match its pod labels")

    # The config file the container reads, from the ConfigMap.
    args = c.get("args", [])
    check("--config" in args, "the container does not pass --config")
    cfg_path = args[args.index("--config") + 1]
    m, vol = mount_of(pod, c, cfg_path)
    check(vol and "configMap" in vol, "%s is not mounted from a ConfigMap", cfg_path)
    cm = one(objs, "ConfigMap", vol["configMap"]["name"])
    key = os.path.relpath(cfg_path, m["mountPath"])
    check(key in cm.get("data", {}), "ConfigMap %s has no key %s", cm["metadata"]["name"], key)
    cfg = yaml.safe_load(cm["data"][key])

    # One port: the config's TCP listener = containerPort = the probes' port
    # = the Services' target.
    port = listen_port(cfg)
    grpc_ports = [p["containerPort"] for p in c.get("ports", []) if p.get("name") == "grpc"]
    check(grpc_ports == [port], "containerPort grpc %s != the config's listen port %d", grpc_ports,
          port)
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        p = c.get(probe)
        check(p and "grpc" in p, "%s is not a gRPC probe", probe)
        check(p["grpc"]["port"] == port, "%s port %s != listen port %d", probe, p["grpc"]["port"],
              port)
        check(p["grpc"].get("service", "") in ("", "traind.v1.Trainer"),
              "%s asks for health service %r, which traind does not report", probe,
              p["grpc"].get("service"))
    services = by_kind(objs, "Service")
    check(any(s["spec"].get("clusterIP") == "None" and s["metadata"]["name"] == spec["serviceName"]
              for s in services), "serviceName %s is not a headless Service", spec["serviceName"])
    for s in services:
        check(all(labels.get(k) == v for k, v in s["spec"]["selector"].items()),
              "Service %s does not select the traind pod", s["metadata"]["name"])
        for sp in s["spec"]["ports"]:
            check(container_port(c, sp.get("targetPort", sp["port"])) == port,
                  "Service %s targets a port other than %d", s["metadata"]["name"], port)

    # The grace period covers the daemon's checkpointing drain.
    grace = pod.get("terminationGracePeriodSeconds", 30)
    check(grace > stop_timeout(cfg),
          "terminationGracePeriodSeconds %d <= stop_timeout_sec %d: the kubelet's SIGKILL would "
          "cut the shutdown checkpoints short", grace, stop_timeout(cfg))

    # A GPU, and the security settings.
    limits = c.get("resources", {}).get("limits", {})
    check(int(limits.get("nvidia.com/gpu", 0)) >= 1, "no nvidia.com/gpu limit")
    psc, csc = pod.get("securityContext", {}), c.get("securityContext", {})
    check(psc.get("runAsNonRoot") is True, "runAsNonRoot is not true")
    check(psc.get("runAsUser") == uid and psc.get("runAsGroup") == uid and psc.get("fsGroup") == uid,
          "runAsUser/runAsGroup/fsGroup are not the image's user %s", uid)
    check(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", "no RuntimeDefault seccomp")
    check(csc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation is not false")
    check(csc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem is not true")
    check(csc.get("capabilities", {}).get("drop") == ["ALL"], "capabilities do not drop ALL")

    # Everything the daemon writes is on a volume; the state is the claim.
    claims = [t["metadata"]["name"] for t in spec.get("volumeClaimTemplates", [])]
    m, _ = mount_of(pod, c, cfg["state_dir"])
    check(m["name"] in claims and m["mountPath"].rstrip("/") == cfg["state_dir"].rstrip("/"),
          "state_dir %s is not the StatefulSet's volume claim", cfg["state_dir"])
    check(not m.get("readOnly"), "the state volume is read-only")
    for a in cfg.get("listen", []):
        if a.startswith("unix:"):
            sm, _ = mount_of(pod, c, a[5:])
            check(not sm.get("readOnly"), "the socket's directory is read-only")
    check(cfg.get("data_dirs"), "the config names no data_dirs")
    for d in cfg["data_dirs"]:
        dm, dv = mount_of(pod, c, d)
        check(dm["mountPath"].rstrip("/") == d.rstrip("/") and dv is not None and
              dm["name"] not in claims, "data dir %s is not its own volume", d)
        if "persistentVolumeClaim" in dv:
            one(objs, "PersistentVolumeClaim", dv["persistentVolumeClaim"]["claimName"])

    # The example Job: trainctl submit of config/jobs/mnist_mlp.yaml, at the
    # Service's address.
    job = one(objs, "Job")
    jpod = job["spec"]["template"]["spec"]
    jc = jpod["containers"][0]
    cmd = jc.get("command", []) + jc.get("args", [])
    check(cmd[:2] == ["trainctl", "submit"] and "--follow" in cmd and "--addr" in cmd,
          "the Job does not run trainctl submit ... --follow --addr ...: %s", cmd)
    addr = cmd[cmd.index("--addr") + 1]
    host, _, aport = addr.rpartition(":")
    svc = [s for s in services if s["metadata"]["name"] == host]
    check(svc and any(p["port"] == int(aport) for p in svc[0]["spec"]["ports"]),
          "--addr %s is not a Service's name and port", addr)
    jobpath = cmd[2]
    jm, jv = mount_of(jpod, jc, jobpath)
    check(jv and "configMap" in jv, "%s is not mounted from a ConfigMap", jobpath)
    jcm = one(objs, "ConfigMap", jv["configMap"]["name"])
    jkey = os.path.relpath(jobpath, jm["mountPath"])
    check(jkey in jcm.get("data", {}), "ConfigMap %s has no key %s", jcm["metadata"]["name"], jkey)
    check(yaml.safe_load(jcm["data"][jkey]) == job_file,
          "the Job's %s differs from config/jobs/mnist_mlp.yaml", jkey)
    check(job["spec"].get("backoffLimit") == 0,
          "the Job's backoffLimit is not 0: a retry would submit the training job again")
    check(jpod.get("securityContext", {}).get("runAsNonRoot") is True,
          "the Job's pod does not run as non-root")
    return cfg, cmd


def check_job_command(trainctl, cmd, job_text, tmp):
    """trainctl accepts the Job's command line: with the job file at a local
    path and an address where nothing listens, it must get as far as trying
    to connect (exit 3), not stop at a usage error (2) or a bad job file."""
    path = os.path.join(tmp, "job.yaml")
    with open(path, "w") as f:
        f.write(job_text)
    argv = list(cmd)
    argv[0] = trainctl
    argv[2] = path
    argv[argv.index("--addr") + 1] = "127.0.0.1:1"
    r = run(argv + ["--timeout", "5"], timeout=60)
    check(r.returncode == 3, "trainctl %s exited %d, want 3 (unreachable):\n%s",
          " ".join(cmd[1:]), r.returncode, r.stdout)


# ------------------------------------------------------------------ daemon


def daemon_accepts(traind, cfg_text, tmp, name):
    """traind serve starts with this config file (listen, state and data
    roots overridden by flags into tmp) and exits 0 on SIGTERM. Returns ""
    or why not."""
    d = tempfile.mkdtemp(dir=tmp, prefix=name + "-")
    cfgp = os.path.join(d, "traind.yaml")
    with open(cfgp, "w") as f:
        f.write(cfg_text)
    os.mkdir(os.path.join(d, "data"))
    logp = os.path.join(d, "stderr")
    env = {k: v for k, v in os.environ.items() if k not in ("TRAIND_DATA_DIR", "NOTIFY_SOCKET")}
    with open(logp, "w") as log:
        p = subprocess.Popen([traind, "serve", "--config", cfgp, "--listen",
                              "unix:" + os.path.join(d, "s"), "--state-dir",
                              os.path.join(d, "state"), "--data-dir", os.path.join(d, "data")],
                             stdout=log, stderr=log, env=env)
    deadline = time.monotonic() + 60
    read = lambda: open(logp).read()
    while "traind ready" not in read() and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if p.poll() is not None:
        return "traind exited %d at start:\n%s" % (p.returncode, read()[-2000:])
    if "traind ready" not in read():
        p.kill()
        p.wait()
        return "traind did not become ready in 60 s:\n%s" % read()[-2000:]
    p.send_signal(signal.SIGTERM)
    try:
        rc = p.wait(timeout=30)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        return "traind did not exit within 30 s of SIGTERM"
    if rc != 0:
        return "traind exited %d after SIGTERM:\n%s" % (rc, read()[-2000:])
    return ""


# ------------------------------------------------------------------ container


def containerfile_stages(text):
    """[(from_line, [instructions])] with continuation lines joined."""
    lines, cur = [], ""
    for raw in text.splitlines():
        s = raw.strip()
        if not cur and (not s or s.startswith("#")):
            continue
        if cur and s.startswith("#"):
            continue
        if s.endswith("\\"):
            cur += s[:-1] + " "
            continue
        lines.append(cur + s)
        cur = ""
    stages = []
    for l in lines:
        word = l.split(None, 1)[0].upper()
        if word == "FROM":
            stages.append((l, []))
        elif stages:
            stages[-1][1].append(l)
    return stages


def instr(stage, word):
    return [l.split(None, 1)[1] for l in stage[1] if l.split(None, 1)[0].upper() == word]


def apt_packages(run_text):
    """Package names (or shell patterns such as cuda-cudart-$v) that
    `apt-get install` lines in a RUN text install."""
    pkgs = []
    for cmd in re.split(r";|&&|\|\|", run_text):
        w = cmd.split()
        if "apt-get" in w and "install" in w:
            for t in w[w.index("install") + 1:]:
                if not t.startswith("-"):
                    pkgs.append(t.split("=", 1)[0])
    return pkgs


def needed_packages(binaries):
    """Debian packages (or NVIDIA package prefixes) providing the shared
    libraries the binaries link directly (a build without --as-needed also
    names its libraries' own dependencies). None when dpkg is not here."""
    if not shutil.which("dpkg") or not shutil.which("readelf"):
        return None
    out = set()
    for b in binaries:
        needed = re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", run(["readelf", "-d", b]).stdout)
        # A sanitizer build links differently from the image's (and names
        # every library its libraries use): nothing to compare.
        if any(l.startswith(("libasan", "libubsan", "libtsan")) for l in needed):
            return None
        paths = dict(re.findall(r"^\s*(\S+) => (\S+)", run(["ldd", b]).stdout, re.M))
        for lib in needed:
            path = paths.get(lib)
            check(path and path != "not", "%s: %s is not found by ldd", b, lib)
            cands = {path, os.path.realpath(path)}
            for c in list(cands):
                if c.startswith("/usr/lib/") or c.startswith("/usr/lib64/"):
                    cands.add(c[len("/usr"):])
                elif c.startswith("/lib"):
                    cands.add("/usr" + c)
            pkg = None
            for c in cands:
                r = run(["dpkg", "-S", c])
                if r.returncode == 0:
                    pkg = r.stdout.split(":", 1)[0].strip()
                    break
            if pkg is None:
                pkg = next((p for pre, p in CUDA_LIB_PACKAGES if lib.startswith(pre)), None)
                check(pkg, "%s links %s (%s), which no Debian package provides", b, lib, path)
            if pkg not in BASE_PACKAGES:
                out.add(pkg)
    return out


def dependency_closure(pkgs):
    """The packages apt installs with pkgs (their recursive Depends), as far
    as this machine's apt knows them; empty without apt-cache."""
    if not pkgs or not shutil.which("apt-cache"):
        return set()
    r = run(["apt-cache", "depends", "--recurse", "--no-recommends", "--no-suggests",
             "--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances"] + list(pkgs))
    return {l.strip() for l in r.stdout.splitlines() if l and not l[0].isspace()}


def check_containerfile(text, needed):
    """The image builds through scripts/setup and scripts/build, installs the
    libraries the binaries need, and runs traind serve as a non-root user.
    Returns that user's uid."""
    stages = containerfile_stages(text)
    check(len(stages) >= 2, "the Containerfile is not multi-stage")
    build, final = stages[0], stages[-1]
    check(re.search(r"\bAS\s+build\b", build[0], re.I), "the first stage is not named build")
    runs = " ; ".join(instr(build, "RUN"))
    check(re.search(r"(^|[\s;&])\./scripts/setup\b", runs), "the build stage does not run scripts/setup")
    check(re.search(r"(^|[\s;&])\./scripts/build\b", runs), "the build stage does not run scripts/build")
    check(re.search(r"\bcmake --install\b", runs), "the build stage does not run cmake --install")
    check(re.search(r"scripts/setup.*scripts/build.*cmake --install", runs),
          "the build stage does not run scripts/setup, scripts/build, cmake --install in order")
    check(any(re.search(r"--from=build\b", c) for c in instr(final, "COPY")),
          "the runtime stage copies nothing from the build stage")

    pkgs = apt_packages(" ; ".join(instr(final, "RUN")))
    # The Debian libraries (whatever the binaries link today, see below), and
    # CUDA's runtime, cuBLAS and NCCL for the GPU backend.
    for want in ("libgrpc", "libprotobuf-c", "libuv1", "libhdf5", "libopenblas", "libyaml",
                 "zlib1g", "cuda-cudart-", "libcublas-", "libnccl2"):
        check(any(p.startswith(want) for p in pkgs), "the runtime stage installs no %s", want)
    # A token such as cuda-cudart-$v stands for any package it expands to.
    pats = [re.sub(r"\\\$(\\\{[^}]*\\\}|\w+)", ".+", re.escape(q)) for q in pkgs]
    closure = dependency_closure([q for q in pkgs if "$" not in q]) if needed else set()
    for p in sorted(needed or ()):
        if p.endswith("-"):  # an NVIDIA package family (cuda-cudart-X-Y)
            ok = any(q.startswith(p) for q in pkgs)
        else:
            ok = any(re.fullmatch(q, p) for q in pats) or p in closure
        check(ok, "the binaries need %s, which the runtime stage does not install (it installs "
              "%s)", p, " ".join(pkgs))

    users = instr(final, "USER")
    check(users, "the runtime stage has no USER")
    uid = users[-1].split(":")[0]
    check(uid.isdigit() and int(uid) != 0,
          "USER %s: give a numeric non-root uid (runAsNonRoot can only verify numbers)", uid)
    ep = instr(final, "ENTRYPOINT")
    check(ep, "no ENTRYPOINT")
    try:
        epv = yaml.safe_load(ep[-1])
    except yaml.YAMLError:
        epv = None
    check(isinstance(epv, list) and os.path.basename(epv[0]) == "traind" and epv[1:] == ["serve"],
          "ENTRYPOINT %s, want [\"/usr/bin/traind\", \"serve\"] (exec form)", ep[-1])
    return int(uid)


# ------------------------------------------------------------------ driver


def fail(msg):
    raise Failure(msg)


class Runner:
    def __init__(self):
        self.passed = self.failed = self.skipped = 0

    def case(self, name, fn, *a):
        try:
            fn(*a)
        except Missing as e:
            self.skipped += 1
            print("SKIP %s: %s" % (name, e))
            return
        except Failure as e:
            self.failed += 1
            print("FAIL %s: %s" % (name, e))
            return
        except Exception:
            self.failed += 1
            print("FAIL %s:\n%s" % (name, traceback.format_exc()))
            return
        self.passed += 1
        print("ok   %s" % name)

    def must_fail(self, name, fn, *a):
        """The check fn must reject this broken input."""
        def inverted():
            try:
                fn(*a)
            except Failure:
                return
            raise Failure("the check passed on a broken input")
        self.case("rejects " + name, inverted)


def find_kubernetes_validate(src):
    env = os.environ.get("KUBERNETES_VALIDATE")
    if env:
        return env
    dirs = [os.path.join(src, ".venv", "bin")]
    if os.environ.get("VIRTUAL_ENV"):
        dirs.append(os.path.join(os.environ["VIRTUAL_ENV"], "bin"))
    for d in dirs:
        p = os.path.join(d, "kubernetes-validate")
        if os.path.isfile(p) and os.access(p, os.X_OK):
            return p
    return shutil.which("kubernetes-validate")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--source-dir", required=True)
    ap.add_argument("--traind", required=True)
    ap.add_argument("--trainctl")
    ap.add_argument("--systemd-analyze", help="default: systemd-analyze on PATH")
    ap.add_argument("--kubernetes-validate",
                    help="default: $KUBERNETES_VALIDATE, SOURCE_DIR/.venv/bin, "
                         "$VIRTUAL_ENV/bin, then PATH")
    args = ap.parse_args()
    src = os.path.abspath(args.source_dir)
    traind = os.path.abspath(args.traind)
    trainctl = os.path.abspath(args.trainctl or os.path.join(os.path.dirname(traind), "trainctl"))
    sd_tool = args.systemd_analyze or shutil.which("systemd-analyze")
    kv_tool = args.kubernetes_validate or find_kubernetes_validate(src)
    tmp = tempfile.mkdtemp(prefix="traind-deploy-")
    R = Runner()

    def need(tool, what):
        if not tool:
            raise Missing("not installed: " + what)

    read = lambda *p: open(os.path.join(src, *p)).read()
    unit_text = read("deploy/systemd/traind.service")
    gpu_text = read("deploy/systemd/traind.service.d/gpu.conf")
    sysusers = read("deploy/systemd/traind.sysusers")
    sys_cfg_text = read("config/traind.yaml")
    sys_cfg = yaml.safe_load(sys_cfg_text)
    unit, gpu = parse_unit(unit_text), parse_unit(gpu_text)
    k8s = os.path.join(src, "deploy/k8s")
    kust = load_docs(os.path.join(k8s, "kustomization.yaml"))[0]
    k8s_files = sorted(os.path.basename(f) for f in glob.glob(os.path.join(k8s, "*.y*ml")))
    res_paths = [os.path.join(k8s, r) for r in kust.get("resources", [])]
    objs = [d for p in res_paths if os.path.isfile(p) for d in load_docs(p)]
    job_text = read("config/jobs/mnist_mlp.yaml")
    job_file = yaml.safe_load(job_text)
    cf_text = read("deploy/Containerfile")

    # ---- systemd
    def verify(dropin=None):
        need(sd_tool, "systemd-analyze (Debian: systemd)")
        systemd_verify(sd_tool, unit_for_verify(unit_text, traind, tmp, dropin))

    R.case("systemd-analyze verify traind.service", verify)
    R.case("systemd-analyze verify traind.service + gpu.conf", verify, gpu_text)

    def verify_broken():
        need(sd_tool, "systemd-analyze (Debian: systemd)")
        systemd_verify(sd_tool, unit_for_verify(unit_text.replace("ProtectHome=", "ProtectHom="),
                                                traind, tmp))
    R.must_fail("a misspelt unit setting (systemd-analyze verify)", verify_broken)

    def security(text=unit_text):
        need(sd_tool, "systemd-analyze (Debian: systemd)")
        systemd_security(sd_tool, unit_for_verify(text, traind, tmp))
    R.case("systemd-analyze security: exposure <= %.1f" % (EXPOSURE_THRESHOLD / 10), security)
    weak = "\n".join(l for l in unit_text.splitlines()
                     if not re.match(r"(Protect|Restrict|Private|CapabilityBoundingSet|"
                                     r"SystemCall|NoNewPrivileges)", l))
    R.must_fail("a unit without hardening (systemd-analyze security)", security, weak)

    def sysusers_ok(text=sysusers):
        tool = shutil.which("systemd-sysusers")
        need(tool, "systemd-sysusers (Debian: systemd)")
        root = tempfile.mkdtemp(dir=tmp)
        p = os.path.join(tmp, "traind.sysusers")
        with open(p, "w") as f:
            f.write(text)
        r = run([tool, "--dry-run", "--root=" + root, p])
        check(r.returncode == 0 and "Creating user 'traind'" in r.stdout,
              "systemd-sysusers --dry-run (exit %d):\n%s", r.returncode, r.stdout)
    R.case("sysusers file", sysusers_ok)
    R.must_fail("a broken sysusers file", sysusers_ok, "u traind - \"x\" /var/lib/traind /bin/sh extra\n")

    R.case("unit agrees with config/traind.yaml, sysusers, hardening", check_unit, unit, gpu,
           sysusers, sys_cfg)
    for what, mutate in (
            ("TimeoutStopSec below stop_timeout_sec",
             lambda u, g, c: c.update(stop_timeout_sec=120)),
            ("TimeoutStopSec at the default stop_timeout_sec",
             lambda u, g, c: u["Service"].append(("TimeoutStopSec", "60"))),
            ("a socket outside RuntimeDirectory",
             lambda u, g, c: c.update(listen=["unix:/run/other/traind.sock"])),
            ("state_dir outside StateDirectory", lambda u, g, c: c.update(state_dir="/srv/traind")),
            ("MemoryDenyWriteExecute=yes",
             lambda u, g, c: u["Service"].append(("MemoryDenyWriteExecute", "yes"))),
            ("Type=simple", lambda u, g, c: u["Service"].append(("Type", "simple"))),
            ("KillMode=control-group",
             lambda u, g, c: u["Service"].append(("KillMode", "control-group"))),
            ("a missing GPU node",
             lambda u, g, c: g.update(Service=[kv for kv in g["Service"]
                                               if kv[1] != "/dev/nvidia-uvm rw"])),
            ("ProtectSystem=full", lambda u, g, c: u["Service"].append(("ProtectSystem", "full"))),
    ):
        u, g, c = copy.deepcopy(unit), copy.deepcopy(gpu), copy.deepcopy(sys_cfg)
        mutate(u, g, c)
        R.must_fail(what, check_unit, u, g, sysusers, c)

    # ---- kubernetes
    R.case("kustomization lists exactly the manifests", check_kustomization, kust, k8s, k8s_files)
    R.must_fail("a manifest the kustomization does not list", check_kustomization, kust, k8s,
                k8s_files + ["extra.yaml"])
    R.must_fail("a listed file that does not exist", check_kustomization,
                dict(kust, resources=kust.get("resources", []) + ["gone.yaml"]), k8s,
                k8s_files + ["gone.yaml"])

    def validate(files=res_paths):
        need(kv_tool, "kubernetes-validate (PyPI: kubernetes-validate)")
        kubernetes_validate(kv_tool, files)
    R.case("kubernetes-validate --strict -k %s" % ",".join(K8S_VERSIONS), validate)
    sts_path = os.path.join(k8s, "statefulset.yaml")
    for what, old, new in (("an unknown field", "terminationGracePeriodSeconds:",
                            "terminationGracePeriod:"),
                           ("a misspelt kind", "kind: StatefulSet", "kind: StatefullSet"),
                           ("a probe port of the wrong type", "port: 7070", "port: seventy")):
        d = tempfile.mkdtemp(dir=tmp)
        p = os.path.join(d, "statefulset.yaml")
        with open(p, "w") as f:
            f.write(open(sts_path).read().replace(old, new, 1))
        R.must_fail(what + " (kubernetes-validate)", validate, [p])

    uid_box = {}
    needed = {}

    def container():
        needed["pkgs"] = needed_packages([traind, trainctl])
        uid_box["uid"] = check_containerfile(cf_text, needed["pkgs"])
    R.case("Containerfile: scripts/setup + scripts/build, runtime libraries, user", container)
    for what, old, new in (("a Containerfile without scripts/build", "./scripts/build", "make"),
                           ("a Containerfile without scripts/setup", "./scripts/setup", "true"),
                           ("a runtime stage without libgrpc", "libgrpc29 ", ""),
                           ("a runtime stage without libhdf5", "libhdf5-103-1 ", ""),
                           ("a runtime stage without CUDA's runtime", "cuda-cudart-$v ", ""),
                           ("an image running as root", "USER 10001:10001", "USER root"),
                           ("an image with a shell-form ENTRYPOINT",
                            'ENTRYPOINT ["/usr/bin/traind", "serve"]', "ENTRYPOINT traind serve")):
        if old not in cf_text:
            R.case("rejects " + what, fail, "mutation target %r is not in the Containerfile" % old)
            continue
        R.must_fail(what, check_containerfile, cf_text.replace(old, new), needed.get("pkgs"))
    # The package list must follow the binaries: one that links a library
    # the runtime stage lacks is caught.
    R.must_fail("a binary needing a library the image lacks", check_containerfile, cf_text,
                (needed.get("pkgs") or set()) | {"libfyaml0"})

    box = {}

    def manifests():
        uid = uid_box.get("uid", 10001)
        box["cfg"], box["cmd"] = check_manifests(objs, kust, uid, job_file)
    R.case("manifests agree (ports, probes, grace period, mounts, security, Job)", manifests)

    def sts_of(o):
        return one(o, "StatefulSet")["spec"]

    def cm_cfg(o, fn):
        cm = one(o, "ConfigMap", "traind-config")
        c = yaml.safe_load(cm["data"]["traind.yaml"])
        fn(c)
        cm["data"]["traind.yaml"] = yaml.safe_dump(c)

    def ctr(o):
        return sts_of(o)["template"]["spec"]["containers"][0]

    for what, mutate in (
            ("a probe on another port",
             lambda o: ctr(o)["livenessProbe"]["grpc"].update(port=7071)),
            ("a listen port other than the containerPort",
             lambda o: cm_cfg(o, lambda c: c.update(listen=["0.0.0.0:7071",
                                                            "unix:/run/traind/traind.sock"]))),
            ("a grace period below stop_timeout_sec",
             lambda o: sts_of(o)["template"]["spec"].update(terminationGracePeriodSeconds=60)),
            ("stop_timeout_sec above the grace period",
             lambda o: cm_cfg(o, lambda c: c.update(stop_timeout_sec=300))),
            ("the default stop_timeout_sec above the grace period",
             lambda o: (cm_cfg(o, lambda c: c.update(stop_timeout_sec=0)),
                        sts_of(o)["template"]["spec"].update(terminationGracePeriodSeconds=45))),
            ("no GPU limit", lambda o: ctr(o)["resources"]["limits"].pop("nvidia.com/gpu")),
            ("a writable root file system",
             lambda o: ctr(o)["securityContext"].update(readOnlyRootFilesystem=False)),
            ("state_dir off the volume claim",
             lambda o: cm_cfg(o, lambda c: c.update(state_dir="/srv/traind"))),
            ("a Service targeting another port",
             lambda o: one(o, "Service", "traind")["spec"]["ports"][0].update(targetPort=8080)),
            ("a Job addressing no Service",
             lambda o: one(o, "Job")["spec"]["template"]["spec"]["containers"][0].update(
                 command=["trainctl", "submit", "/jobs/mnist_mlp.yaml", "--follow", "--addr",
                          "trainer:7070"])),
            ("a Job file that differs from config/jobs/mnist_mlp.yaml",
             lambda o: one(o, "ConfigMap", "traind-jobs")["data"].update(
                 {"mnist_mlp.yaml": job_text.replace("epochs: 10", "epochs: 1")})),
    ):
        o = copy.deepcopy(objs)
        try:
            mutate(o)
        except Exception as e:  # the manifests changed shape: report, do not crash
            R.case("rejects " + what, fail, "cannot build the broken input: %r" % e)
            continue
        R.must_fail(what, check_manifests, o, kust, uid_box.get("uid", 10001), job_file)

    def job_command():
        check("cmd" in box, "the manifests did not parse")
        cm = one(objs, "ConfigMap", "traind-jobs")
        check_job_command(trainctl, box["cmd"], cm["data"]["mnist_mlp.yaml"], tmp)
    R.case("trainctl accepts the Job's command line", job_command)

    # ---- the daemon takes both config files
    def accepts(text, name):
        why = daemon_accepts(traind, text, tmp, name)
        check(not why, "%s", why)
    R.case("traind serve starts with config/traind.yaml (the unit's config)", accepts,
           sys_cfg_text, "systemd")

    def k8s_cfg():
        check("cfg" in box, "the manifests did not parse")
        accepts(one(objs, "ConfigMap", "traind-config")["data"]["traind.yaml"], "k8s")
    R.case("traind serve starts with the ConfigMap's config", k8s_cfg)
    R.must_fail("a config with an unknown key (traind serve)", accepts,
                sys_cfg_text + "\nstop_timeout_seconds: 60\n", "bad")

    shutil.rmtree(tmp, ignore_errors=True)
    print("%d passed, %d failed, %d skipped" % (R.passed, R.failed, R.skipped))
    if R.failed:
        return 1
    if R.skipped:
        if in_ci():
            print("CI=true: a skipped check is a failure")
            return 1
        return SKIP
    return 0


if __name__ == "__main__":
    sys.exit(main())
