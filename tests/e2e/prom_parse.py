#!/usr/bin/python3
"""The Prometheus endpoint seen from the Python ecosystem.

Usage: prom_parse.py PROM_TOOL_BINARY

prom_tool (tests/test_prom.c built with TD_PROM_TOOL) serves a rendering with
counters, gauges, labelled samples with hostile label values, a histogram and
an untyped family on 127.0.0.1:0 and prints its port. This script:

1. scrapes http://127.0.0.1:PORT/metrics with urllib (status, Content-Type,
   Content-Length);
2. parses the body with prometheus_client.parser.text_string_to_metric_families
   (Debian's python3-prometheus-client) and compares every family, type, help
   text, sample name, label and value with what the fixture wrote;
3. checks the raw text line by line against the text format 0.0.4 grammar,
   which that parser is too lax to enforce (HELP/TYPE once per family and
   before its samples, families contiguous, escaping, cumulative buckets);
4. asks prom_tool to publish the next generation and scrapes again;
5. checks 404, 405 (with Allow) and HEAD, then closes prom_tool's stdin and
   expects it to stop cleanly and the port to be closed.

Exit 77 (skip) when prometheus_client is missing, unless CI=true.
"""
import functools
import math
import os
import re
import socket
import subprocess
import sys
import urllib.error
import urllib.request

try:
    from prometheus_client.parser import text_string_to_metric_families
except ImportError as e:  # pragma: no cover
    print(f"SKIP: {e}")
    sys.exit(1 if os.environ.get("CI") == "true" else 77)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Mirrors render_fixture() in tests/test_prom.c.
JOBS = ["plain", "back\\slash", 'say "hi"', "two\nlines", "end\\", "{}=, #",
        "unicode \u00e9\u2713", ""]
LOSSES = [0.25, -2.5, 1e-300, sys.float_info.max, math.nan, math.inf, -math.inf, 0.1]
LOSS_HELP = "Loss of the last step, per job (a backslash \\ and a newline\nin the help)."
BOUNDS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]
# How Go's and Python's clients write those bounds in le="...".
LE_TEXT = ["0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10",
           "+Inf"]
OBSERVATIONS = [0.003, 0.005, 0.02, 0.3, 1, 7, 42]

failures = 0


def check(cond, what):
    global failures
    if not cond:
        failures += 1
        print(f"FAIL: {what}")
    return cond


def histogram_samples(name, job, observations):
    """Cumulative buckets, _sum and _count, counted here from the raw values."""
    out = []
    for bound, le in zip(BOUNDS + [math.inf], LE_TEXT):
        out.append((name + "_bucket", {"job": job, "le": le},
                    float(sum(1 for v in observations if v <= bound))))
    # Added left to right as the C side does (not math.fsum, not sum(), which
    # compensates on newer Pythons).
    total = functools.reduce(lambda a, b: a + b, observations, 0.0)
    out.append((name + "_sum", {"job": job}, total))
    out.append((name + "_count", {"job": job}, float(len(observations))))
    return out


def expected_families(gen):
    """(name, type, documentation, samples) as the parser reports them: counter
    families lose their _total suffix, untyped becomes unknown."""
    obs = OBSERVATIONS + [0.75] * gen
    return [
        ("traind_jobs_submitted", "counter", "Jobs accepted since the daemon started.",
         [("traind_jobs_submitted_total", {}, 42.0 + gen)]),
        ("traind_up", "gauge", "Whether the daemon is serving.", [("traind_up", {}, 1.0)]),
        ("traind_job_loss", "gauge", LOSS_HELP,
         [("traind_job_loss", {"job": j, "device": "cpu:0"}, v) for j, v in zip(JOBS, LOSSES)]),
        ("traind_examples", "counter", "",
         [("traind_examples_total", {"job": "plain", "device": "cpu:0"}, 9007199254740992.0),
          ("traind_examples_total", {"job": "plain", "device": "cpu:1"}, 0.1 + 0.2)]),
        ("traind_step_seconds", "histogram", "Wall time of one training step.",
         histogram_samples("traind_step_seconds", "plain", obs)
         + histogram_samples("traind_step_seconds", "idle", [])),
        ("traind_build_info", "unknown", "Build of the daemon.",
         [("traind_build_info", {"version": "0.1.0"}, 1.0)]),
    ]


def same_value(a, b):
    return (math.isnan(a) and math.isnan(b)) or a == b


def check_parsed(text, gen):
    try:
        families = list(text_string_to_metric_families(text))
    except Exception as e:  # the parser raises ValueError on malformed lines
        check(False, f"generation {gen}: the parser refused the text: {e!r}")
        return
    want = expected_families(gen)
    check([f.name for f in families] == [w[0] for w in want],
          f"generation {gen}: families {[f.name for f in families]}, "
          f"want {[w[0] for w in want]}")
    by_name = {f.name: f for f in families}
    for name, typ, doc, samples in want:
        f = by_name.get(name)
        if not check(f is not None, f"family {name} missing"):
            continue
        check(f.type == typ, f"{name}: type {f.type}, want {typ}")
        check(f.documentation == doc, f"{name}: help {f.documentation!r}, want {doc!r}")
        got = [(s.name, s.labels, s.value) for s in f.samples]
        check(len(got) == len(samples), f"{name}: {len(got)} samples, want {len(samples)}")
        for g, w in zip(got, samples):
            check(g[0] == w[0] and g[1] == w[1] and same_value(g[2], w[2]),
                  f"{name}: sample {g!r}, want {w!r}")
        for s in f.samples:
            check(s.timestamp is None, f"{name}: unexpected timestamp {s.timestamp}")


# The text format 0.0.4, strictly.
NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r"[a-zA-Z_][a-zA-Z0-9_]*"
ESCAPED = r'(?:[^"\\\n]|\\[\\"n])*'
VALUE = r"(?:NaN|[+-]Inf|[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)"
HELP_RE = re.compile(rf"^# HELP ({NAME}) ((?:[^\\\n]|\\[\\n])*)$")
TYPE_RE = re.compile(rf"^# TYPE ({NAME}) (counter|gauge|histogram|summary|untyped)$")
SAMPLE_RE = re.compile(
    rf'^({NAME})(?:\{{((?:{LABEL}="{ESCAPED}")(?:,{LABEL}="{ESCAPED}")*)?\}})? ({VALUE})$')
LABEL_RE = re.compile(rf'({LABEL})="({ESCAPED})"')


def unescape(s):
    return re.sub(r'\\([\\"n])', lambda m: "\n" if m.group(1) == "n" else m.group(1), s)


def check_grammar(text, gen):
    check(text.endswith("\n"), "the text does not end with a newline")
    lines = text[:-1].split("\n") if text.endswith("\n") else text.split("\n")
    seen = set()       # families whose TYPE line was seen
    helped = set()
    current = None     # (name, type)
    series = {}        # histogram series (labels without le) -> [(le, count)]
    for n, line in enumerate(lines, 1):
        where = f"generation {gen} line {n} {line!r}"
        m = HELP_RE.match(line)
        if m:
            check(m.group(1) not in helped and m.group(1) not in seen,
                  f"{where}: HELP after the family began")
            helped.add(m.group(1))
            continue
        m = TYPE_RE.match(line)
        if m:
            check(m.group(1) not in seen, f"{where}: second TYPE for {m.group(1)}")
            seen.add(m.group(1))
            current = (m.group(1), m.group(2))
            continue
        m = SAMPLE_RE.match(line)
        if not check(m is not None, f"{where}: not a HELP, TYPE or sample line"):
            continue
        if not check(current is not None, f"{where}: sample before any TYPE"):
            continue
        name, typ = current
        allowed = {name + s for s in ("_bucket", "_sum", "_count")} if typ == "histogram" \
            else {name}
        check(m.group(1) in allowed, f"{where}: sample outside its family {name}")
        labels = [(k, unescape(v)) for k, v in LABEL_RE.findall(m.group(2) or "")]
        names = [k for k, _ in labels]
        check(len(names) == len(set(names)), f"{where}: repeated label")
        if m.group(1).endswith("_bucket") and typ == "histogram":
            check(names and names[-1] == "le", f"{where}: le is not the last label")
            key = (name, tuple(labels[:-1]))
            series.setdefault(key, []).append((labels[-1][1], float(m.group(3))))
        elif m.group(1).endswith("_count") and typ == "histogram":
            buckets = series.get((name, tuple(labels)), [])
            check([le for le, _ in buckets] == LE_TEXT,
                  f"{where}: le values {[le for le, _ in buckets]}, want {LE_TEXT}")
            counts = [c for _, c in buckets]
            check(counts == sorted(counts), f"{where}: buckets not cumulative: {counts}")
            check(bool(counts) and counts[-1] == float(m.group(3)),
                  f"{where}: +Inf bucket {counts[-1] if counts else None} != count")
    check(helped <= seen, f"HELP without TYPE: {helped - seen}")


def scrape(port, path="/metrics", method="GET", data=None):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method, data=data)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def check_scrape(port, gen):
    status, headers, body = scrape(port)
    check(status == 200, f"GET /metrics: status {status}")
    check(headers.get("Content-Type") == CONTENT_TYPE,
          f"Content-Type {headers.get('Content-Type')!r}, want {CONTENT_TYPE!r}")
    check(headers.get("Content-Length") == str(len(body)),
          f"Content-Length {headers.get('Content-Length')}, body {len(body)} bytes")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        check(False, f"the body is not UTF-8: {e}")
        return
    check_parsed(text, gen)
    check_grammar(text, gen)
    return body


def main():
    tool = subprocess.Popen([sys.argv[1], "127.0.0.1:0"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        line = tool.stdout.readline()
        m = re.fullmatch(r"port (\d+)\n", line)
        if not check(m is not None, f"prom_tool printed {line!r}, want 'port N'"):
            return
        port = int(m.group(1))

        first = check_scrape(port, 0)

        tool.stdin.write("next\n")
        tool.stdin.flush()
        line = tool.stdout.readline()
        check(line == "published 1\n", f"prom_tool answered {line!r} to next")
        second = check_scrape(port, 1)
        check(first != second, "the second scrape served the first rendering")

        status, headers, body = scrape(port, "/nope")
        check(status == 404, f"GET /nope: status {status}")
        status, headers, body = scrape(port, "/metrics", "POST", b"x=1")
        check(status == 405, f"POST /metrics: status {status}")
        check(headers.get("Allow") == "GET, HEAD", f"POST /metrics: Allow {headers.get('Allow')!r}")
        status, headers, body = scrape(port, "/metrics", "HEAD")
        check(status == 200 and body == b"", f"HEAD /metrics: status {status}, {len(body)} bytes")
        check(headers.get("Content-Length") == str(len(second or b"")),
              f"HEAD Content-Length {headers.get('Content-Length')}")

        tool.stdin.close()
        rc = tool.wait(timeout=30)
        check(rc == 0, f"prom_tool exited {rc}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
            check(False, "the port still accepts connections after stop")
        except OSError:
            pass
    finally:
        if tool.poll() is None:
            tool.kill()
            tool.wait()


if __name__ == "__main__":
    main()
    print("prom_parse: " + ("ok" if failures == 0 else f"{failures} failures"))
    sys.exit(1 if failures else 0)
