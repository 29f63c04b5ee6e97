"""Checks of deploy/: the systemd unit, the Kubernetes manifests and the
Containerfile, against each other, the daemon's config files, the security
guide (docs/security.md) and the built binaries.

  systemd     `systemd-analyze verify` passes on the unit, alone and with the
              GPU drop-in; `systemd-analyze security` rates it below a
              threshold; the unit agrees with config/traind.yaml (the config it
              starts with: socket under RuntimeDirectory, state under
              StateDirectory, TimeoutStopSec above stop_timeout_sec) and with
              deploy/systemd/traind-tls.yaml (its TLS example: certificates
              and tokens where the sandbox lets the daemon read them, data
              roots by principal inside data_dirs), has its hardening, and
              the sysusers file declares its user.
  kubernetes  every manifest validates strictly against the official schemas
              (kubernetes-validate, offline, several Kubernetes versions);
              the kustomization lists exactly the manifests in its directory;
              the ConfigMap's config serves the API over mutual TLS only
              (no plaintext network listener), with its certificate, key and
              CA from one kubernetes.io/tls Secret, and a health-only
              listener; the probes use the health port, the Services and the
              containerPort the TLS port, no Service exposes anything else;
              terminationGracePeriodSeconds exceeds stop_timeout_sec; mounts
              cover the config's paths; the Job's command is one trainctl
              accepts, with a client certificate from a Secret, and its job
              file is config/jobs/mnist_mlp.yaml; the cert-manager example of
              docs/security.md issues the Secrets the manifests mount, for
              the names the clients dial and the principals the config knows.
  daemon      traind starts with config/traind.yaml, traind-tls.yaml and the
              ConfigMap's config (and refuses a bad one, a plaintext network
              listener and a TLS listener that admits nobody). With the two
              TLS configs it is then called for real over TLS, with
              certificates made by docs/security.md's own openssl commands:
              every principal of the config gets its role, a certificate of
              an unknown name is PERMISSION_DENIED, a client without a
              certificate cannot connect (mutual TLS) or is UNAUTHENTICATED,
              tokens map to their principals, the health listener answers
              health checks only, and a Secret update the way the kubelet
              makes it (an atomic ..data symlink swap) plus SIGHUP moves the
              listener to a new CA and server certificate.
  container   the Containerfile builds with scripts/setup and scripts/build,
              installs the Debian packages the built binaries link against,
              runs as the user the manifests expect, exposes the ConfigMap's
              TLS and health ports, and listens on no plaintext network
              address by default.

Every consistency check is also run on a broken copy of its input and must
then fail, so a check that can no longer fail is itself a failure.

Usage: deploy_check.py --source-dir DIR --traind BIN [--trainctl BIN]
         [--systemd-analyze BIN] [--kubernetes-validate BIN]
kubernetes-validate comes from PyPI; scripts/setup installs it into
SOURCE_DIR/.venv. The calls over TLS use Debian's python3-grpcio,
python3-grpc-tools and python3-protobuf, and openssl.
Exit status: 0 all passed, 1 a check failed, 77 a tool was missing (and
CI is not "true") but everything that ran passed.
"""
import argparse
import copy
import glob
import importlib
import os
import re
import shlex
import shutil
import signal
import socket
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


ROLES = ("admin", "user", "viewer")


def under(path, root):
    root = root.rstrip("/")
    return path == root or path.startswith(root + "/")


def check_auth(cfg, what):
    """auth's roles are known, and the principals' and roles' data roots lie
    inside data_dirs (the daemon's own rules, stated here so that a config
    the checks pass is one it takes)."""
    auth = cfg.get("auth") or {}
    check(auth.get("local_role", "admin") in ROLES + ("none",), "%s: auth.local_role %r is not a "
          "role", what, auth.get("local_role"))
    roots = cfg.get("data_dirs", [])
    for kind, rows in (("principal", auth.get("principals", [])), ("role", auth.get("roles", []))):
        for r in rows:
            check(r.get("role") in ROLES, "%s: auth %s %s has role %r", what, kind,
                  r.get("name", ""), r.get("role"))
            for d in r.get("data_dirs", []):
                check(any(under(d, root) for root in roots), "%s: data dir %s of %s %s is not "
                      "inside data_dirs %s", what, d, kind, r.get("name", r.get("role")), roots)


def tls_files(cfg):
    """(field, path) of every certificate, key and CA file and of the token
    file the config names."""
    out = []
    for l in cfg.get("listeners", []):
        for f in ("cert_file", "key_file", "client_ca_file"):
            if (l.get("tls") or {}).get(f):
                out.append((f, l["tls"][f]))
    if (cfg.get("auth") or {}).get("token_file"):
        out.append(("token_file", cfg["auth"]["token_file"]))
    return out


def check_host_tls(unit, cfg):
    """deploy/systemd/traind-tls.yaml, the unit's TLS example: a TLS
    listener, no plaintext network listener, and every secret file where
    the unit's sandbox lets the daemon read it (/etc/traind, the
    ConfigurationDirectory; not under ProtectHome's or PrivateTmp's
    directories, not in the state or runtime directories)."""
    what = "traind-tls.yaml"
    check(tls_listeners(cfg, what), "%s has no TLS listener", what)
    conf = ["/etc/" + d for d in unit_list(unit, "ConfigurationDirectory")]
    hidden = ["/home", "/root", "/run/user", "/tmp", "/var/tmp"]
    hidden += ["/run/" + d for d in unit_list(unit, "RuntimeDirectory")]
    hidden += ["/var/lib/" + d for d in unit_list(unit, "StateDirectory")]
    files = tls_files(cfg)
    check(any(f == "key_file" for f, _ in files), "%s names no TLS key", what)
    for f, p in files:
        check(os.path.isabs(p), "%s: %s %s is not an absolute path", what, f, p)
        check(not any(under(p, h) for h in hidden), "%s: %s %s is where the unit's sandbox hides "
              "it or the daemon writes", what, f, p)
        check(any(under(p, c) for c in conf), "%s: %s %s is not in the unit's "
              "ConfigurationDirectory (%s)", what, f, p, conf)
    check_auth(cfg, what)


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


def split_hostport(addr):
    """(host, port) of a host:port address ([v6]:port too)."""
    host, _, port = addr.rpartition(":")
    check(host and port.isdigit(), "bad TCP address %r", addr)
    return host, int(port)


def is_loopback(host):
    h = host.strip("[]")
    return h == "localhost" or h == "::1" or h.startswith("127.")


def tls_listeners(cfg, what):
    """The config's TLS listeners. Fails on a plaintext API listener on a
    network address: in `listen` (the daemon refuses it) or in `listeners`,
    insecure or not (the shipped configs must not need `insecure: true`,
    which makes every caller there an admin)."""
    for a in cfg.get("listen", []):
        if not a.startswith("unix:"):
            check(is_loopback(split_hostport(a)[0]),
                  "%s: listen %s is plaintext TCP on a network address", what, a)
    out = []
    for l in cfg.get("listeners", []):
        a = l.get("address", "")
        check(not l.get("insecure"), "%s: listener %s is insecure (plaintext, every caller an "
              "admin)", what, a)
        if l.get("tls"):
            out.append(l)
        elif not a.startswith("unix:"):
            check(is_loopback(split_hostport(a)[0]),
                  "%s: listener %s is plaintext TCP on a network address", what, a)
    return out


def client_cert_mode(tls):
    """A TLS listener's client_cert with its default (config.proto)."""
    return tls.get("client_cert") or ("require" if tls.get("client_ca_file") else "none")


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


def file_source(pod, c, path):
    """Where file `path` of container c comes from: (kind, name, key), kind
    "configMap" or "secret" (a volume of that kind or a projected volume's
    source). Fails for anything else, and for a subPath mount (the kubelet
    never updates those: no certificate rotation)."""
    m, vol = mount_of(pod, c, path)
    check(vol is not None, "%s: the volume %s of its mount does not exist", path, m["name"])
    check(not m.get("subPath") and not m.get("subPathExpr"),
          "%s is mounted with subPath: the kubelet would never update it", path)
    rel = os.path.normpath(os.path.relpath(path, m["mountPath"]))
    if "configMap" in vol:
        sources = [("configMap", vol["configMap"].get("name"), vol["configMap"])]
    elif "secret" in vol:
        sources = [("secret", vol["secret"].get("secretName"), vol["secret"])]
    elif "projected" in vol:
        sources = [(k, s[k].get("name"), s[k]) for s in vol["projected"].get("sources", [])
                   for k in ("configMap", "secret") if k in s]
    else:
        raise Failure("%s comes from volume %s, which is neither a ConfigMap nor a Secret"
                      % (path, vol["name"]))
    for kind, name, src in sources:
        items = src.get("items")
        if items:
            for it in items:
                if os.path.normpath(it["path"]) == rel:
                    return kind, name, it["key"]
        elif "/" not in rel:
            return kind, name, rel
    raise Failure("%s is no file of volume %s (mounted at %s)" % (path, vol["name"],
                                                                  m["mountPath"]))


# The keys of a kubernetes.io/tls Secret with its CA, as cert-manager writes
# them, and trainctl's variables for them.
TLS_KEYS = (("cert_file", "tls.crt"), ("key_file", "tls.key"), ("client_ca_file", "ca.crt"))
CLIENT_ENV = (("TRAINCTL_TLS_CERT", "tls.crt"), ("TRAINCTL_TLS_KEY", "tls.key"),
              ("TRAINCTL_TLS_CA", "ca.crt"))


def client_secret(pod, c):
    """The Secret whose certificate container c's trainctl presents: its
    TRAINCTL_TLS_* variables name the tls.crt, tls.key and ca.crt of one
    Secret. Returns (secret name, {variable: path})."""
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    names = set()
    for var, key in CLIENT_ENV:
        check(env.get(var), "container %s sets no %s: trainctl would have no client "
              "certificate for the mutual TLS listener", c["name"], var)
        kind, name, k = file_source(pod, c, env[var])
        check(kind == "secret" and k == key, "container %s: %s %s is %s %s's %s, not a Secret's "
              "%s", c["name"], var, env[var], kind, name, k, key)
        names.add(name)
    check(len(names) == 1, "container %s takes its certificate, key and CA from several Secrets "
          "%s", c["name"], sorted(names))
    return names.pop(), {var: env[var] for var, _ in CLIENT_ENV}


def check_manifests(objs, kust, uid, job_file):
    """The objects (all documents of the kustomization's resources) against
    each other; uid: the image's user; job_file: config/jobs/mnist_mlp.yaml,
    parsed. Returns what later checks use: {"cfg", "cmd", "env",
    "server_secret", "client_secret"}."""
    ns = kust.get("namespace")
    if by_kind(objs, "Namespace"):
        check(one(objs, "Namespace")["metadata"]["name"] == ns,
              "the Namespace is not the kustomization's namespace %s", ns)
    for o in objs:
        check(o["metadata"].get("namespace") in (None, ns), "%s %s sets another namespace",
              o["kind"], o["metadata"]["name"])
    check(not by_kind(objs, "Secret"), "the manifests hold a Secret: keys do not belong in the "
          "repository (docs/security.md makes them)")

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
    check("--listen" not in args, "the container passes --listen: the listeners belong in the "
          "ConfigMap, where these checks see them")
    cfg_path = args[args.index("--config") + 1]
    kind, cm_name, key = file_source(pod, c, cfg_path)
    check(kind == "configMap", "%s does not come from a ConfigMap", cfg_path)
    cm = one(objs, "ConfigMap", cm_name)
    check(key in cm.get("data", {}), "ConfigMap %s has no key %s", cm_name, key)
    cfg = yaml.safe_load(cm["data"][key])

    # The API over mutual TLS only, its files from one kubernetes.io/tls
    # Secret; the health listener for the probes.
    tls = tls_listeners(cfg, "the ConfigMap's config")
    check(len(tls) == 1, "the ConfigMap's config should have one TLS listener, has %d", len(tls))
    t = tls[0]["tls"]
    check(client_cert_mode(t) == "require", "the TLS listener does not require client "
          "certificates (client_cert %s): anyone reaching the Service could try tokens",
          client_cert_mode(t))
    port = split_hostport(tls[0]["address"])[1]
    server_secrets = set()
    for field, want in TLS_KEYS:
        check(t.get(field), "the TLS listener has no %s", field)
        kind, name, k = file_source(pod, c, t[field])
        check(kind == "secret" and k == want, "tls.%s %s is %s %s's %s, not a Secret's %s",
              field, t[field], kind, name, k, want)
        server_secrets.add(name)
    check(len(server_secrets) == 1, "the TLS files come from several Secrets %s",
          sorted(server_secrets))
    check(cfg.get("health_listen"), "the config has no health_listen: the kubelet's probes cannot "
          "present a client certificate")
    hport = split_hostport(cfg["health_listen"])[1]
    check(hport != port, "health_listen and the TLS listener share port %d", port)
    principals = {p.get("name"): p.get("role") for p in (cfg.get("auth") or {}).get("principals", [])}
    check(principals.get("traind-admin") == "admin",
          "auth.principals does not make traind-admin (the example admin certificate) an admin")
    check_auth(cfg, "the ConfigMap's config")

    # Ports: grpc-tls = the TLS listener, health = health_listen (the
    # probes'), and nothing else but the metrics port; the Services expose
    # the TLS port only.
    named = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
    check(named.get("grpc-tls") == port, "containerPort grpc-tls %s != the TLS listener's port %d",
          named.get("grpc-tls"), port)
    check(named.get("health") == hport, "containerPort health %s != health_listen's port %d",
          named.get("health"), hport)
    allowed = {port, hport}
    if cfg.get("metrics_listen"):
        allowed.add(split_hostport(cfg["metrics_listen"])[1])
    extra = sorted(set(p["containerPort"] for p in c.get("ports", [])) - allowed)
    check(not extra, "the container declares ports %s that no listener of the config serves "
          "securely", extra)
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        p = c.get(probe)
        check(p and "grpc" in p, "%s is not a gRPC probe", probe)
        check(p["grpc"]["port"] == hport, "%s port %s != health_listen's port %d (the kubelet "
              "cannot present a client certificate)", probe, p["grpc"]["port"], hport)
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
                  "Service %s exposes port %s, which is not the TLS listener's %d",
                  s["metadata"]["name"], sp["port"], port)
            check(sp.get("appProtocol") != "kubernetes.io/h2c",
                  "Service %s calls its TLS port plaintext HTTP/2 (appProtocol h2c)",
                  s["metadata"]["name"])

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
    # Service's address, with a client certificate of its own.
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
    client, env = client_secret(jpod, jc)
    check(client not in server_secrets, "the Job presents the server's own certificate and key "
          "(Secret %s)", client)
    for ic in jpod.get("initContainers", []):
        if "trainctl" in " ".join(ic.get("command", []) + ic.get("args", [])):
            check(client_secret(jpod, ic)[0] == client, "init container %s uses another "
                  "client certificate than the Job", ic["name"])
    jobpath = cmd[2]
    kind, jcm_name, jkey = file_source(jpod, jc, jobpath)
    check(kind == "configMap", "%s is not mounted from a ConfigMap", jobpath)
    jcm = one(objs, "ConfigMap", jcm_name)
    check(jkey in jcm.get("data", {}), "ConfigMap %s has no key %s", jcm_name, jkey)
    check(yaml.safe_load(jcm["data"][jkey]) == job_file,
          "the Job's %s differs from config/jobs/mnist_mlp.yaml", jkey)
    check(job["spec"].get("backoffLimit") == 0,
          "the Job's backoffLimit is not 0: a retry would submit the training job again")
    check(jpod.get("securityContext", {}).get("runAsNonRoot") is True,
          "the Job's pod does not run as non-root")
    return {"cfg": cfg, "cmd": cmd, "env": env, "server_secret": server_secrets.pop(),
            "client_secret": client}


def doc_block(text, name, lang):
    """The fenced block of docs/security.md that follows the marker
    `<!-- deploy_check: NAME -->`."""
    m = re.search(r"<!-- deploy_check: %s -->\s*```%s\n(.*?)```" % (re.escape(name), lang), text,
                  re.S)
    check(m, "docs/security.md has no ```%s block marked deploy_check: %s", lang, name)
    return m.group(1)


def check_cert_manager(docs, objs, kust, info):
    """The cert-manager example of docs/security.md (docs: its documents)
    against the manifests: it issues the server's Secret for every name the
    Services give the pod, and the Job's for a principal that may submit,
    and an admin certificate, from one CA Issuer of traind's own."""
    ns = kust.get("namespace")
    for d in docs:
        check(d.get("apiVersion") == "cert-manager.io/v1" and d.get("kind") in
              ("Issuer", "Certificate"), "not a cert-manager Issuer or Certificate: %s %s",
              d.get("apiVersion"), d.get("kind"))
        check(d["metadata"].get("namespace") == ns, "%s %s is not in namespace %s", d["kind"],
              d["metadata"]["name"], ns)
    issuers = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "Issuer"}
    certs = {d["spec"]["secretName"]: d["spec"] for d in docs if d["kind"] == "Certificate"}
    cas = {s for s, c in certs.items() if c.get("isCA")}
    for name, c in certs.items():
        ref = c.get("issuerRef", {})
        check(ref.get("kind") == "Issuer" and ref.get("name") in issuers,
              "Certificate %s names no Issuer of the example", name)
        if not c.get("isCA"):
            ca = issuers[ref["name"]].get("ca", {}).get("secretName")
            check(ca in cas, "Certificate %s is not issued by the example's CA", name)

    server = certs.get(info["server_secret"])
    check(server, "no Certificate writes the server's Secret %s", info["server_secret"])
    check("server auth" in server.get("usages", []), "the server Certificate lacks server auth")
    sts = one(objs, "StatefulSet")
    # A Service's names, or for the headless one the pod's.
    want = set()
    for s in by_kind(objs, "Service"):
        n = s["metadata"]["name"]
        if s["spec"].get("clusterIP") == "None":
            want.add("%s-0.%s.%s.svc.cluster.local" % (sts["metadata"]["name"], n, ns))
        else:
            want |= {n, "%s.%s.svc" % (n, ns), "%s.%s.svc.cluster.local" % (n, ns)}
    missing = sorted(want - set(server.get("dnsNames", [])))
    check(not missing, "the server Certificate does not name %s, which clients dial", missing)

    principals = {p.get("name"): p.get("role")
                  for p in (info["cfg"].get("auth") or {}).get("principals", [])}
    client = certs.get(info["client_secret"])
    check(client, "no Certificate writes the Job's Secret %s", info["client_secret"])
    check("client auth" in client.get("usages", []), "the Job's Certificate lacks client auth")
    check(principals.get(client.get("commonName")) in ("user", "admin"),
          "the Job's certificate names %r, which auth.principals does not let submit jobs",
          client.get("commonName"))
    check(any(c.get("commonName") == "traind-admin" and "client auth" in c.get("usages", [])
              for c in certs.values()), "the example issues no traind-admin client certificate")


def job_env_local(env, certs, broken=None):
    """The Job's TRAINCTL_TLS_* with each file replaced by one made here
    (broken: a variable whose file is made empty)."""
    local = {"TRAINCTL_TLS_CA": certs.ca}
    local["TRAINCTL_TLS_CERT"], local["TRAINCTL_TLS_KEY"] = certs.client("deploy-check-job")
    out = {}
    for var in env:
        out[var] = local[var]
        if var == broken:
            out[var] = os.path.join(certs.dir, "empty.pem")
            open(out[var], "w").close()
    return out


def check_job_command(trainctl, cmd, env, job_text, tmp):
    """trainctl accepts the Job's command line and TLS settings: with the
    job file at a local path, the certificates made here and an address
    where nothing listens, it must get as far as trying to connect (exit
    3), not stop at a usage error (2), a bad job file or a bad certificate."""
    path = os.path.join(tmp, "job.yaml")
    with open(path, "w") as f:
        f.write(job_text)
    argv = list(cmd)
    argv[0] = trainctl
    argv[2] = path
    argv[argv.index("--addr") + 1] = "127.0.0.1:1"
    e = {k: v for k, v in os.environ.items() if not k.startswith(("TRAINCTL_", "TRAIND_"))}
    e["TRAINCTL_CONFIG"] = os.path.join(tmp, "no-trainctl-config.yaml")
    e.update(env)
    r = run(argv + ["--timeout", "5"], timeout=60, env=e)
    check(r.returncode == 3, "trainctl %s (with %s) exited %d, want 3 (unreachable):\n%s",
          " ".join(cmd[1:]), " ".join("%s=%s" % kv for kv in sorted(env.items())), r.returncode,
          r.stdout)


# ------------------------------------------------------------------ daemon


class Daemon:
    """traind serve with a config file, its unix socket, state and data
    root moved into a directory of tmp by flags."""

    def __init__(self, traind, cfg_text, tmp, name):
        self.dir = tempfile.mkdtemp(dir=tmp, prefix=name + "-")
        self.cfg_path = os.path.join(self.dir, "traind.yaml")
        with open(self.cfg_path, "w") as f:
            f.write(cfg_text)
        self.data = os.path.join(self.dir, "data")
        os.makedirs(self.data, exist_ok=True)
        self.data_dirs = [self.data]
        self.sock = os.path.join(self.dir, "s")
        self.log_path = os.path.join(self.dir, "stderr")
        self.traind = traind
        self.proc = None

    def log(self):
        with open(self.log_path) as f:
            return f.read()

    def start(self):
        """Returns "" once the daemon says it is ready, or why not."""
        env = {k: v for k, v in os.environ.items() if k not in ("TRAIND_DATA_DIR", "NOTIFY_SOCKET")}
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                [self.traind, "serve", "--config", self.cfg_path, "--listen", "unix:" + self.sock,
                 "--state-dir", os.path.join(self.dir, "state")] +
                [a for p in self.data_dirs for a in ("--data-dir", p)],
                stdout=log, stderr=log, env=env)
        deadline = time.monotonic() + 60
        while ("traind ready" not in self.log() and self.proc.poll() is None and
               time.monotonic() < deadline):
            time.sleep(0.05)
        if self.proc.poll() is not None:
            return "traind exited %d at start:\n%s" % (self.proc.returncode, self.log()[-2000:])
        if "traind ready" not in self.log():
            self.kill()
            return "traind did not become ready in 60 s:\n%s" % self.log()[-2000:]
        return ""

    def stop(self):
        """SIGTERM; returns "" when the daemon exits 0, or why not."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()
            return "traind did not exit within 30 s of SIGTERM"
        if rc != 0:
            return "traind exited %d after SIGTERM:\n%s" % (rc, self.log()[-2000:])
        return ""

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def daemon_accepts(traind, cfg_text, tmp, name):
    """traind serve starts with this config file (listen, state and data
    roots overridden by flags into tmp) and exits 0 on SIGTERM. Returns ""
    or why not."""
    d = Daemon(traind, cfg_text, tmp, name)
    return d.start() or d.stop()


def sh(script, cwd):
    r = subprocess.run(["/bin/sh", "-e", "-c", script], cwd=cwd, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=120)
    check(r.returncode == 0, "docs/security.md's commands failed (exit %d) in %s:\n%s\n%s",
          r.returncode, cwd, script, r.stdout[-2000:])


class Certs:
    """A CA, a server certificate and client certificates made in a new
    directory of tmp by the openssl commands of docs/security.md (its
    blocks marked deploy_check: ca, server, client)."""

    def __init__(self, doc_text, tmp):
        if not shutil.which("openssl"):
            raise Missing("not installed: openssl")
        self.dir = tempfile.mkdtemp(dir=tmp, prefix="certs-")
        sh(doc_block(doc_text, "ca", "sh"), self.dir)
        sh(doc_block(doc_text, "server", "sh"), self.dir)
        self.client_script = doc_block(doc_text, "client", "sh")
        check(re.search(r"^name=\S+$", self.client_script, re.M),
              "docs/security.md's client certificate commands do not begin with name=...")
        self.ca = os.path.join(self.dir, "ca.crt")
        self.server_crt = os.path.join(self.dir, "server.crt")
        self.server_key = os.path.join(self.dir, "server.key")
        for p in (self.ca, self.server_crt, self.server_key):
            check(os.path.isfile(p), "docs/security.md's commands did not make %s",
                  os.path.basename(p))

    def client(self, name):
        """(certificate, key) for common name `name`."""
        check(re.fullmatch(r"[A-Za-z0-9._-]+", name), "principal %r: not a file name", name)
        crt, key = (os.path.join(self.dir, name + ext) for ext in (".crt", ".key"))
        if not os.path.isfile(crt):
            sh(re.sub(r"^name=\S+$", lambda m: "name=" + name, self.client_script, count=1,
                      flags=re.M), self.dir)
            check(os.path.isfile(crt) and os.path.isfile(key),
                  "docs/security.md's client commands did not make %s.crt and %s.key", name, name)
        return crt, key

    def read(self, path):
        with open(path, "rb") as f:
            return f.read()


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TlsDir:
    """A directory laid out as the kubelet writes a Secret's (or projected)
    volume: the files in a timestamped directory, `..data` a symbolic link
    to it, and the visible name a link through `..data`. update() swaps
    `..data` atomically, as a Secret's update does."""

    def __init__(self, parent, files):
        self.root = os.path.join(parent, "etc")
        os.makedirs(self.root)
        self.n = 0
        self.update(files)
        os.symlink("..data/tls", os.path.join(self.root, "tls"))
        self.path = os.path.join(self.root, "tls")

    def update(self, files):
        """files: {name: bytes}."""
        self.n += 1
        ts = "..2025_01_01_00_00_%02d.%d" % (self.n, os.getpid())
        os.makedirs(os.path.join(self.root, ts, "tls"))
        for name, data in files.items():
            with open(os.path.join(self.root, ts, "tls", name), "wb") as f:
                f.write(data)
        tmp = os.path.join(self.root, "..data_tmp")
        os.symlink(ts, tmp)
        os.rename(tmp, os.path.join(self.root, "..data"))


def tls_payload(cfg, certs):
    """{file name: contents} for the files the config's TLS listeners name,
    from certs; the files must share one directory (so that one Secret can
    hold them)."""
    files, dirs = {}, set()
    for l in cfg.get("listeners", []):
        t = l.get("tls") or {}
        for field, src in (("cert_file", certs.server_crt), ("key_file", certs.server_key),
                           ("client_ca_file", certs.ca)):
            if t.get(field):
                dirs.add(os.path.dirname(t[field]))
                files[os.path.basename(t[field])] = certs.read(src)
    check(len(dirs) <= 1, "the TLS files lie in several directories %s", sorted(dirs))
    return files


# Tokens of the token file the live checks write, by role.
TOKENS = {r: ("deploy-check-%s-%s" % (r, os.urandom(16).hex()), "tok-" + r) for r in ROLES}


def live_config(cfg, d, certs, tlsdir):
    """cfg (parsed) made to run here: its TLS files in tlsdir, the token
    file in d, every TCP listener on its own host and a free port, its data
    roots (d.data_dirs, given to the daemon as flags) and those of
    principals and roles moved into d (created). Returns the new config and
    {"tls": [(port, listener)], "health": port or None}."""
    cfg = copy.deepcopy(cfg)
    roots = cfg.get("data_dirs", [])
    d.data_dirs = [d.data] + [os.path.join(d.dir, "data-%d" % i) for i in range(1, len(roots))]
    for p in d.data_dirs:
        os.makedirs(p, exist_ok=True)
    if roots:
        cfg["data_dirs"] = list(d.data_dirs)

    def moved(p):
        for r, new in zip(roots, d.data_dirs):
            if under(p, r):
                q = new + p[len(r.rstrip("/")):]
                os.makedirs(q, exist_ok=True)
                return q
        raise Failure("data dir %s is not inside data_dirs %s" % (p, roots))

    def reported(addr):
        host, _ = split_hostport(addr)
        return "%s:%d" % (host, free_port())

    plan = {"tls": [], "health": None}
    for l in cfg.get("listeners", []):
        if l["address"].startswith("unix:"):
            l["address"] = "unix:" + os.path.join(d.dir, "l%d.sock" % len(plan["tls"]))
            continue
        l["address"] = reported(l["address"])
        t = l.get("tls")
        if t:
            for f in ("cert_file", "key_file", "client_ca_file"):
                if t.get(f):
                    t[f] = os.path.join(tlsdir.path, os.path.basename(t[f]))
            plan["tls"].append((split_hostport(l["address"])[1], l))
    if cfg.get("health_listen"):
        cfg["health_listen"] = reported(cfg["health_listen"])
        plan["health"] = split_hostport(cfg["health_listen"])[1]
    if cfg.get("metrics_listen"):
        cfg["metrics_listen"] = "127.0.0.1:%d" % free_port()
    auth = cfg.get("auth") or {}
    if auth.get("token_file"):
        auth["token_file"] = os.path.join(d.dir, "tokens")
        with open(auth["token_file"], "w") as f:
            f.write("# TOKEN,NAME,ROLE\n\n")
            for r, (tok, name) in sorted(TOKENS.items()):
                f.write("%s,%s,%s\n" % (tok, name, r))
        os.chmod(auth["token_file"], 0o600)
    for rows in (auth.get("principals", []), auth.get("roles", [])):
        for row in rows:
            row["data_dirs"] = [moved(p) for p in row.get("data_dirs", [])]
    return cfg, plan


class Caller:
    """Calls a daemon with Python's grpcio (Debian's python3-grpcio), stubs
    generated from proto/ (tests/e2e/traind_harness.py)."""

    def __init__(self, source_dir):
        # Handshakes that are meant to fail would be logged on stderr.
        os.environ.setdefault("GRPC_VERBOSITY", "NONE")
        try:
            import grpc
            importlib.import_module("grpc_tools")  # traind_harness.Stubs runs its protoc
            sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
            import traind_harness
        except ImportError as e:
            raise Missing("%s (Debian: python3-grpcio python3-grpc-tools python3-protobuf)" % e)
        self.grpc = grpc
        self.stubs = traind_harness.Stubs(source_dir)

    def channel(self, target, ca=None, cert=None):
        """A channel of its own (no shared subchannel, so each check makes its
        own handshake): TLS trusting `ca` and presenting cert=(crt, key), or
        plaintext without ca."""
        opts = [("grpc.use_local_subchannel_pool", 1)]
        if ca is None:
            return self.grpc.insecure_channel(target, options=opts)
        rd = lambda p: open(p, "rb").read()
        creds = self.grpc.ssl_channel_credentials(
            root_certificates=rd(ca), private_key=rd(cert[1]) if cert else None,
            certificate_chain=rd(cert[0]) if cert else None)
        return self.grpc.secure_channel(target, creds, options=opts)

    def info(self, target, ca=None, cert=None, token=None):
        """GetDaemonInfo: (DaemonInfo, None) or (None, (code name, details))."""
        md = [("authorization", "Bearer " + token)] if token else None
        with self.channel(target, ca, cert) as ch:
            try:
                r = self.stubs.grpc.TrainerStub(ch).GetDaemonInfo(
                    self.stubs.pb.GetDaemonInfoRequest(), timeout=10, metadata=md)
                return r, None
            except self.grpc.RpcError as e:
                return None, (e.code().name, e.details())

    def health(self, target):
        with self.channel(target) as ch:
            try:
                r = self.stubs.health_grpc.HealthStub(ch).Check(
                    self.stubs.health.HealthCheckRequest(service=""), timeout=10)
                return self.stubs.health.HealthCheckResponse.ServingStatus.Name(r.status), None
            except self.grpc.RpcError as e:
                return None, (e.code().name, e.details())


def expect_role(got, who, role, name=None):
    info, err = got
    check(info is not None, "%s: GetDaemonInfo failed %s, want role %s", who, err, role)
    check(info.caller_role == role, "%s: caller_role %r (caller %r), want %r", who,
          info.caller_role, info.caller, role)
    if name:
        check(name in info.caller, "%s: caller %r does not name %s", who, info.caller, name)


def expect_code(got, who, codes):
    info, err = got
    check(info is None and err[0] in codes, "%s: %s, want %s", who,
          "answered (caller %r, role %r)" % (info.caller, info.caller_role) if info else err,
          " or ".join(codes))


def target_of(port):
    return "127.0.0.1:%d" % port


def check_live(caller, cfg, plan, d, certs):
    """The running daemon (config cfg, as live_config made it) answers each
    kind of caller as docs/security.md says."""
    auth = cfg.get("auth") or {}
    principals = auth.get("principals", [])
    local = auth.get("local_role") or "admin"
    got = caller.info("unix:" + d.sock)
    if local == "none":
        expect_code(got, "the unix socket without credentials", ("UNAUTHENTICATED",))
    else:
        expect_role(got, "the unix socket without credentials", local, "unix:")
    check(plan["tls"], "no TLS listener to call")
    for port, l in plan["tls"]:
        t, target = l["tls"], target_of(port)
        mode = client_cert_mode(t)
        where = "TLS %s (client_cert %s)" % (l["address"], mode)
        if mode != "none":
            for p in principals:
                expect_role(caller.info(target, certs.ca, certs.client(p["name"])),
                            "%s, certificate %s" % (where, p["name"]), p["role"], p["name"])
            expect_code(caller.info(target, certs.ca, certs.client("deploy-check-stranger")),
                        where + ", a certificate of the CA for a name with no role",
                        ("PERMISSION_DENIED",))
        if mode == "require":
            expect_code(caller.info(target, certs.ca), where + ", no client certificate",
                        ("UNAVAILABLE",))
        else:
            expect_code(caller.info(target, certs.ca), where + ", no credentials",
                        ("UNAUTHENTICATED",))
        if auth.get("token_file"):
            # Under require a token comes with a certificate; the token's
            # principal wins (an admin's certificate with a viewer's token
            # is the viewer).
            cert = certs.client(principals[0]["name"]) if mode == "require" else None
            for role, (tok, name) in sorted(TOKENS.items()):
                expect_role(caller.info(target, certs.ca, cert, token=tok),
                            "%s, token of %s%s" % (where, name, " with a certificate" if cert
                                                   else ""), role, name)
            if mode == "request" and principals:
                tok, name = TOKENS["viewer"]
                expect_role(caller.info(target, certs.ca, certs.client(principals[0]["name"]),
                                        token=tok),
                            "%s, certificate %s with the token of %s" %
                            (where, principals[0]["name"], name), "viewer", name)
            expect_code(caller.info(target, certs.ca, cert, token="not-a-token"),
                        where + ", an unknown token", ("UNAUTHENTICATED",))
    if auth.get("token_file"):
        tok, name = TOKENS["user"]
        expect_role(caller.info("unix:" + d.sock, token=tok), "the unix socket with the token of "
                    + name, "user", name)
    if plan["health"]:
        h = target_of(plan["health"])
        status, err = caller.health(h)
        check(status == "SERVING", "health_listen %s: Health/Check %s, want SERVING", h,
              status or err)
        expect_code(caller.info(h), "health_listen %s, GetDaemonInfo" % h, ("UNIMPLEMENTED",))


def rotate(caller, doc_text, tmp, cfg, plan, d, tlsdir):
    """A new CA and server certificate arrive the way the kubelet updates a
    Secret's volume, then SIGHUP: the next handshakes use them, so a client
    of the new CA gets in and one of the old CA no longer does."""
    new = Certs(doc_text, tmp)
    tlsdir.update(tls_payload(cfg, new))
    d.proc.send_signal(signal.SIGHUP)
    port, l = plan["tls"][0]
    admin = [p for p in cfg["auth"]["principals"] if p["role"] == "admin"][0]["name"]
    deadline = time.monotonic() + 30
    while True:
        got = caller.info(target_of(port), new.ca, new.client(admin))
        if got[0] is not None or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    expect_role(got, "after the certificates' update and SIGHUP, the new CA's %s" % admin,
                "admin", admin)
    return new


def serve_tls(traind, caller, doc_text, cfg_text, tmp, name, rotation=False, mutate=None):
    """Starts traind with the config (cfg_text) made to run here, calls it
    as check_live does (and with rotation, rotates its certificates), and
    stops it. mutate(cfg) changes the daemon's config but not what the
    calls expect (to prove that they can fail). A port taken in between by
    someone else is tried again."""
    for attempt in range(3):
        certs = Certs(doc_text, tmp)
        d = Daemon(traind, "", tmp, name)
        cfg = yaml.safe_load(cfg_text)
        tlsdir = TlsDir(d.dir, tls_payload(cfg, certs))
        cfg, plan = live_config(cfg, d, certs, tlsdir)
        daemon_cfg = copy.deepcopy(cfg)
        if mutate:
            mutate(daemon_cfg)
        with open(d.cfg_path, "w") as f:
            yaml.safe_dump(daemon_cfg, f)
        why = d.start()
        if why and "in use" in why and attempt < 2:
            continue
        check(not why, "%s", why)
        try:
            check_live(caller, cfg, plan, d, certs)
            if rotation:
                old = certs
                certs = rotate(caller, doc_text, tmp, cfg, plan, d, tlsdir)
                admin = [p for p in cfg["auth"]["principals"] if p["role"] == "admin"][0]["name"]
                expect_code(caller.info(target_of(plan["tls"][0][0]), old.ca, old.client(admin)),
                            "after the update, a client of the old CA", ("UNAVAILABLE",))
                check_live(caller, cfg, plan, d, certs)
        finally:
            why = d.stop() if d.proc.poll() is None else "traind died:\n" + d.log()[-2000:]
        check(not why, "%s", why)
        return


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
    for want in ("libgrpc", "libprotobuf-c", "libuv1", "libhdf5", "libdnnl", "libyaml",
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


def check_container_network(text, cfg):
    """The runtime stage exposes the TLS and health ports of cfg (the
    ConfigMap's config) and no other, and its default command adds no
    plaintext network listener (traind would refuse to start)."""
    final = containerfile_stages(text)[-1]
    exposed = set()
    for e in instr(final, "EXPOSE"):
        for w in e.split():
            check(re.fullmatch(r"\d+(/tcp)?", w), "EXPOSE %s: not a TCP port", w)
            exposed.add(int(w.split("/")[0]))
    want = {split_hostport(l["address"])[1] for l in tls_listeners(cfg, "the ConfigMap's config")}
    if cfg.get("health_listen"):
        want.add(split_hostport(cfg["health_listen"])[1])
    check(exposed == want, "the image exposes %s; the ConfigMap's config serves %s",
          sorted(exposed), sorted(want))
    cmds = instr(final, "CMD")
    argv = yaml.safe_load(cmds[-1]) if cmds else []
    check(isinstance(argv, list), "CMD %s is not in exec form", cmds[-1] if cmds else "")
    for i, a in enumerate(argv):
        addr = a[len("--listen="):] if a.startswith("--listen=") else (
            argv[i + 1] if a == "--listen" and i + 1 < len(argv) else None)
        if addr and not addr.startswith("unix:"):
            check(is_loopback(split_hostport(addr)[0]), "CMD listens on %s: plaintext TCP on a "
                  "network address", addr)


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
    host_cfg_text = read("deploy/systemd/traind-tls.yaml")
    host_cfg = yaml.safe_load(host_cfg_text)
    sec_doc = read("docs/security.md")

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

    R.case("config/traind.yaml: no plaintext network listener", tls_listeners, sys_cfg,
           "config/traind.yaml")
    R.must_fail("a plaintext network address in config/traind.yaml", tls_listeners,
                dict(sys_cfg, listen=["0.0.0.0:7070"]), "config/traind.yaml")

    # The unit with its TLS example config.
    R.case("unit agrees with traind-tls.yaml", check_unit, unit, gpu, sysusers, host_cfg)
    R.case("traind-tls.yaml: TLS, secrets where the sandbox lets traind read them",
           check_host_tls, unit, host_cfg)

    def host_mut(fn):
        c = copy.deepcopy(host_cfg)
        fn(c)
        return c
    for what, fn in (
            ("a token file under /home (ProtectHome)",
             lambda c: c["auth"].update(token_file="/home/traind/tokens")),
            ("a TLS key in /tmp (PrivateTmp)",
             lambda c: c["listeners"][0]["tls"].update(key_file="/tmp/server.key")),
            ("a TLS key in the state directory",
             lambda c: c["listeners"][0]["tls"].update(key_file="/var/lib/traind/server.key")),
            ("no TLS listener", lambda c: c.update(listeners=[])),
            ("an insecure listener",
             lambda c: c["listeners"].append({"address": "0.0.0.0:7070", "insecure": True})),
            ("a principal's data dir outside data_dirs",
             lambda c: c["auth"]["principals"][1].update(data_dirs=["/srv/elsewhere"])),
            ("a principal with an unknown role",
             lambda c: c["auth"]["principals"][0].update(role="root")),
    ):
        R.must_fail(what + " (traind-tls.yaml)", check_host_tls, unit, host_mut(fn))

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
                           ("a probe port of the wrong type", "port: 7071", "port: seventy"),
                           ("a projected Secret without its name", "name: traind-tls",
                            "secretName: traind-tls")):
        text = open(sts_path).read()
        if old not in text:
            R.case("rejects " + what, fail, "mutation target %r is not in statefulset.yaml" % old)
            continue
        d = tempfile.mkdtemp(dir=tmp)
        p = os.path.join(d, "statefulset.yaml")
        with open(p, "w") as f:
            f.write(text.replace(old, new, 1))
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
        box.update(check_manifests(objs, kust, uid, job_file))
    R.case("manifests agree (mTLS listener and Secret, health port and probes, Services, grace "
           "period, mounts, security, Job)", manifests)

    def sts_of(o):
        return one(o, "StatefulSet")["spec"]

    def cm_cfg(o, fn):
        cm = one(o, "ConfigMap", "traind-config")
        c = yaml.safe_load(cm["data"]["traind.yaml"])
        fn(c)
        cm["data"]["traind.yaml"] = yaml.safe_dump(c)

    def ctr(o):
        return sts_of(o)["template"]["spec"]["containers"][0]

    def vol(o, name, pod=None):
        pod = pod or sts_of(o)["template"]["spec"]
        return [v for v in pod["volumes"] if v["name"] == name][0]

    def jpod(o):
        return one(o, "Job")["spec"]["template"]["spec"]

    def tls_of(c):
        return [l for l in c["listeners"] if l.get("tls")][0]

    def projected_secret(o):
        return [s["secret"] for s in vol(o, "config")["projected"]["sources"] if "secret" in s][0]

    def all_probes(o, port):
        for p in ("startupProbe", "livenessProbe", "readinessProbe"):
            ctr(o)[p]["grpc"]["port"] = port

    for what, mutate in (
            ("a probe on the TLS port", lambda o: ctr(o)["livenessProbe"]["grpc"].update(port=7443)),
            ("all probes on the TLS port", lambda o: all_probes(o, 7443)),
            ("a TLS port other than the containerPort",
             lambda o: cm_cfg(o, lambda c: tls_of(c).update(address="0.0.0.0:7444"))),
            ("a plaintext network listen address",
             lambda o: cm_cfg(o, lambda c: c["listen"].append("0.0.0.0:7070"))),
            ("an insecure listener",
             lambda o: cm_cfg(o, lambda c: c["listeners"].append(
                 {"address": "0.0.0.0:7070", "insecure": True}))),
            ("a plaintext listener on a network address",
             lambda o: cm_cfg(o, lambda c: c["listeners"].append({"address": "0.0.0.0:7070"}))),
            ("a TLS listener without client certificates",
             lambda o: cm_cfg(o, lambda c: tls_of(c)["tls"].update(client_cert="request"))),
            ("no health listener", lambda o: cm_cfg(o, lambda c: c.pop("health_listen"))),
            ("the health listener on the TLS port",
             lambda o: cm_cfg(o, lambda c: c.update(health_listen="0.0.0.0:7443"))),
            ("a TLS key that is not the Secret's tls.key",
             lambda o: [it for it in projected_secret(o)["items"]
                        if it["key"] == "tls.key"][0].update(key="tls.crt")),
            ("a TLS key from the ConfigMap",
             lambda o: cm_cfg(o, lambda c: tls_of(c)["tls"].update(
                 key_file="/etc/traind/traind.yaml"))),
            ("TLS files mounted with subPath",
             lambda o: [m for m in ctr(o)["volumeMounts"]
                        if m["name"] == "config"][0].update(subPath="tls")),
            ("no admin principal",
             lambda o: cm_cfg(o, lambda c: c["auth"].update(principals=[
                 p for p in c["auth"]["principals"] if p["name"] != "traind-admin"]))),
            ("a Secret in the manifests",
             lambda o: o.append({"apiVersion": "v1", "kind": "Secret",
                                 "metadata": {"name": "traind-tls"}})),
            ("a plaintext gRPC containerPort",
             lambda o: ctr(o)["ports"].append({"name": "grpc", "containerPort": 7070})),
            ("a Service exposing the health port",
             lambda o: one(o, "Service", "traind")["spec"]["ports"].append(
                 {"name": "health", "port": 7071, "targetPort": "health"})),
            ("a Service calling its TLS port h2c",
             lambda o: one(o, "Service", "traind")["spec"]["ports"][0].update(
                 appProtocol="kubernetes.io/h2c")),
            ("a --listen flag in the container's args",
             lambda o: ctr(o)["args"].extend(["--listen", "0.0.0.0:7070"])),
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
                          "trainer:7443"])),
            ("a Job at the plaintext port",
             lambda o: jpod(o)["containers"][0].update(
                 command=["trainctl", "submit", "/jobs/mnist_mlp.yaml", "--follow", "--addr",
                          "traind:7070"])),
            ("a Job without a client certificate",
             lambda o: jpod(o)["containers"][0].pop("env")),
            ("a Job's client key from a ConfigMap",
             lambda o: vol(o, "client-tls", jpod(o)).update(
                 secret=None, configMap={"name": "traind-jobs"})),
            ("a Job presenting the server's certificate",
             lambda o: vol(o, "client-tls", jpod(o))["secret"].update(secretName="traind-tls")),
            ("an init container with another client certificate",
             lambda o: jpod(o)["initContainers"][0]["env"][0].update(value="/jobs/ca.crt")),
            ("a Job file that differs from config/jobs/mnist_mlp.yaml",
             lambda o: one(o, "ConfigMap", "traind-jobs")["data"].update(
                 {"mnist_mlp.yaml": job_text.replace("epochs: 10", "epochs: 1")})),
    ):
        o = copy.deepcopy(objs)
        try:
            mutate(o)
            for v in jpod(o)["volumes"]:  # a volume kind replaced by None is gone
                for k in [k for k, x in v.items() if x is None]:
                    del v[k]
        except Exception as e:  # the manifests changed shape: report, do not crash
            R.case("rejects " + what, fail, "cannot build the broken input: %r" % e)
            continue
        R.must_fail(what, check_manifests, o, kust, uid_box.get("uid", 10001), job_file)

    def container_network(text=cf_text, o=objs):
        check("cfg" in box, "the manifests did not parse")
        cfg = yaml.safe_load(one(o, "ConfigMap", "traind-config")["data"]["traind.yaml"])
        check_container_network(text, cfg)
    R.case("Containerfile exposes the TLS and health ports, no plaintext network listener",
           container_network)
    for what, old, new in (("an image exposing the plaintext port", "EXPOSE 7443 7071",
                            "EXPOSE 7070 7443 7071"),
                           ("an image listening on plaintext TCP",
                            'CMD ["--config", "/etc/traind/traind.yaml"]',
                            'CMD ["--config", "/etc/traind/traind.yaml", "--listen", '
                            '"0.0.0.0:7070"]')):
        if old not in cf_text:
            R.case("rejects " + what, fail, "mutation target %r is not in the Containerfile" % old)
            continue
        R.must_fail(what, container_network, cf_text.replace(old, new))

    # The cert-manager example of the security guide issues what the
    # manifests mount.
    cm_docs = []

    def cert_manager():
        check("cfg" in box, "the manifests did not parse")
        cm_docs[:] = [d for d in yaml.safe_load_all(doc_block(sec_doc, "cert-manager", "yaml"))
                      if d]
        check_cert_manager(cm_docs, objs, kust, box)
    R.case("docs/security.md: the cert-manager example issues the mounted Secrets",
           cert_manager)

    def cm_mut(fn):
        d = copy.deepcopy(cm_docs)
        certs = {x["spec"].get("secretName"): x["spec"] for x in d if x["kind"] == "Certificate"}
        fn(certs)
        return d
    for what, fn in (
            ("a server certificate without the Service's name",
             lambda c: c["traind-tls"].update(dnsNames=[n for n in c["traind-tls"]["dnsNames"]
                                                        if n != "traind"])),
            ("a server certificate without the pod's name",
             lambda c: c["traind-tls"].update(dnsNames=["traind"])),
            ("a Job certificate for a name with no role",
             lambda c: c["traind-submit-tls"].update(commonName="someone")),
            ("a Job certificate for server auth",
             lambda c: c["traind-submit-tls"].update(usages=["server auth"])),
            ("a server Secret of another name",
             lambda c: c["traind-tls"].update(secretName="traind-server")),
            ("a certificate of another issuer",
             lambda c: c["traind-tls"]["issuerRef"].update(name="letsencrypt")),
    ):
        if not cm_docs or "traind-tls" not in str(cm_docs) or "traind-submit-tls" not in str(cm_docs):
            R.case("rejects " + what + " (cert-manager)", fail, "the cert-manager example did not "
                   "parse or lacks traind-tls/traind-submit-tls")
            continue
        R.must_fail(what + " (cert-manager)", lambda d: check_cert_manager(d, objs, kust, box),
                    cm_mut(fn))

    def job_command(broken=None):
        check("cmd" in box, "the manifests did not parse")
        cm = one(objs, "ConfigMap", "traind-jobs")
        env = job_env_local(box["env"], job_certs(), broken)
        check_job_command(trainctl, box["cmd"], env, cm["data"]["mnist_mlp.yaml"], tmp)
    certs_box = {}

    def job_certs():
        if "certs" not in certs_box:
            certs_box["certs"] = Certs(sec_doc, tmp)
        return certs_box["certs"]
    R.case("trainctl accepts the Job's command line and client certificate", job_command)
    R.must_fail("a Job whose CA file holds no certificate (trainctl)", job_command,
                "TRAINCTL_TLS_CA")

    # ---- the daemon takes the config files
    def accepts(text, name):
        why = daemon_accepts(traind, text, tmp, name)
        check(not why, "%s", why)
    R.case("traind serve starts with config/traind.yaml (the unit's config)", accepts,
           sys_cfg_text, "systemd")
    R.must_fail("a config with an unknown key (traind serve)", accepts,
                sys_cfg_text + "\nstop_timeout_seconds: 60\n", "bad")

    caller_box = {}

    def caller():
        if "c" not in caller_box:
            caller_box["c"] = Caller(src)
        return caller_box["c"]

    def serves(text, name, rotation=False):
        serve_tls(traind, caller(), sec_doc, text, tmp, name, rotation)

    R.case("traind serves traind-tls.yaml: certificates, tokens, roles over TLS", serves,
           host_cfg_text, "host-tls")

    def k8s_text():
        check("cfg" in box, "the manifests did not parse")
        return one(objs, "ConfigMap", "traind-config")["data"]["traind.yaml"]

    R.case("traind serves the ConfigMap's config: mTLS roles, health port, rotation by the "
           "Secret's update and SIGHUP", lambda: serves(k8s_text(), "k8s", rotation=True))

    # The daemon told something else than the config the calls expect:
    # refused at start, or caught by the calls.
    def refuses(fn, name):
        serve_tls(traind, caller(), sec_doc, k8s_text(), tmp, name, mutate=fn)
    R.must_fail("a plaintext network listener (traind serve)", refuses,
                lambda c: c["listeners"].append({"address": "0.0.0.0:%d" % free_port()}),
                "plain")
    R.must_fail("a TLS listener that admits nobody (traind serve)", refuses,
                lambda c: tls_listeners(c, "")[0]["tls"].update(client_cert="none"), "nobody")
    R.must_fail("a daemon that makes traind-admin a viewer (calls over mTLS)", refuses,
                lambda c: c["auth"]["principals"][0].update(role="viewer"), "viewer")
    R.must_fail("a daemon that does not require client certificates (calls over TLS)", refuses,
                lambda c: tls_listeners(c, "")[0]["tls"].update(client_cert="request"),
                "request")
    R.must_fail("a daemon without its health listener (calls)", refuses,
                lambda c: c.pop("health_listen"), "nohealth")

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
