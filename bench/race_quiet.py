"""What the race runners (bench/cpu_race.sh, bench/gpt_race.sh) share: the
machine's CPU time from /proc/stat, the wait for a quiet machine, and a
process's CPU time. The runners import it from bench/ (PYTHONPATH)."""
import os
import resource
import time

HZ = os.sysconf("SC_CLK_TCK")


def jiffies():
    """(busy, total) jiffies of all CPUs from /proc/stat's first line."""
    with open("/proc/stat") as f:
        user, nice, system, idle, iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
    busy = user + nice + system + irq + softirq + steal  # guest time is inside user
    return busy, busy + idle + iowait


def wait_quiet(wait_max, busy_max):
    """Waits until the machine's busy fraction over one second is below
    busy_max, at most wait_max seconds: (quiet, seconds waited, the last
    busy fraction)."""
    start = time.monotonic()
    while True:
        b0, t0 = jiffies()
        time.sleep(1.0)  # the window over which the busy fraction is measured
        b1, t1 = jiffies()
        busy = (b1 - b0) / max(t1 - t0, 1)
        if busy < float(busy_max):
            return True, time.monotonic() - start, busy
        if time.monotonic() - start >= float(wait_max):
            return False, time.monotonic() - start, busy


def cpu(who):
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime
