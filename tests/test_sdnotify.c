/* daemon/sdnotify.c against a stand-in service manager: an AF_UNIX
 * datagram socket named by NOTIFY_SOCKET (a path, then an abstract name),
 * checking the exact datagrams each call sends, that nothing is sent (and 0
 * returned) without NOTIFY_SOCKET, and how WATCHDOG_USEC/WATCHDOG_PID are
 * read. */
#include <errno.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "sdnotify.h"

/* The next datagram, NUL-terminated, waiting at most a second; "" and -1
 * when none came. */
static ssize_t recv_msg(int fd, char *buf, size_t n) {
  ssize_t r = recv(fd, buf, n - 1, 0);
  buf[r > 0 ? r : 0] = '\0';
  return r;
}

/* True when no datagram is waiting. */
static int queue_empty(int fd) {
  char b[16];
  ssize_t r = recv(fd, b, sizeof b, MSG_DONTWAIT);
  return r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
}

static uint64_t now_usec(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

#define EXPECT_MSG(fd, call, want)                                                        \
  do {                                                                                    \
    char got_[2048];                                                                      \
    int rc_ = (call);                                                                     \
    CHECK(rc_ > 0, "%s returned %d, want > 0", #call, rc_);                               \
    recv_msg((fd), got_, sizeof got_);                                                    \
    CHECK(strcmp(got_, (want)) == 0, "%s sent \"%s\", want \"%s\"", #call, got_, (want)); \
  } while (0)

/* Every message, checked against the socket `fd` that NOTIFY_SOCKET names. */
static void check_messages(int fd) {
  EXPECT_MSG(fd, td_sd_ready("serving on unix:/run/traind/traind.sock"),
             "READY=1\nSTATUS=serving on unix:/run/traind/traind.sock");
  EXPECT_MSG(fd, td_sd_ready(NULL), "READY=1");
  EXPECT_MSG(fd, td_sd_ready(""), "READY=1");
  EXPECT_MSG(fd, td_sd_status("draining: 2 jobs checkpointing"),
             "STATUS=draining: 2 jobs checkpointing");
  EXPECT_MSG(fd, td_sd_status("first line\nREADY=1"), "STATUS=first line");
  EXPECT_MSG(fd, td_sd_status(NULL), "STATUS=");
  EXPECT_MSG(fd, td_sd_status(""), "STATUS=");
  EXPECT_MSG(fd, td_sd_ready("ok\nWATCHDOG=trigger"), "READY=1\nSTATUS=ok");

  char longs[2000], want[1000];
  memset(longs, 'x', sizeof longs - 1);
  longs[sizeof longs - 1] = '\0';
  snprintf(want, sizeof want, "STATUS=%.900s", longs);
  EXPECT_MSG(fd, td_sd_status(longs), want);

  EXPECT_MSG(fd, td_sd_stopping(), "STOPPING=1");
  EXPECT_MSG(fd, td_sd_watchdog_ping(), "WATCHDOG=1");
  EXPECT_MSG(fd, td_sd_reloaded(), "READY=1");

  /* RELOADING=1 carries the monotonic clock, read between the two here. */
  uint64_t before = now_usec();
  int rc = td_sd_reloading();
  uint64_t after = now_usec();
  CHECK(rc > 0, "td_sd_reloading returned %d", rc);
  char got[256];
  recv_msg(fd, got, sizeof got);
  unsigned long long t = 0;
  int consumed = 0;
  int n = sscanf(got, "RELOADING=1\nMONOTONIC_USEC=%llu%n", &t, &consumed);
  CHECK(n == 1 && got[consumed] == '\0',
        "td_sd_reloading sent \"%s\", want \"RELOADING=1\\nMONOTONIC_USEC=<usec>\"", got);
  CHECK(t >= before && t <= after, "MONOTONIC_USEC=%llu not within [%" PRIu64 ", %" PRIu64 "]", t,
        before, after);

  CHECK(queue_empty(fd), "an unexpected extra datagram was sent");
}

static int bind_dgram(const struct sockaddr_un *sa, socklen_t len) {
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return -1;
  struct timeval tv = {.tv_sec = 1};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  if (bind(fd, (const struct sockaddr *)sa, len) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

static void check_watchdog(void) {
  uint64_t usec;
  char pid[32], other[32];
  snprintf(pid, sizeof pid, "%ld", (long)getpid());
  snprintf(other, sizeof other, "%ld", (long)getpid() + 1);

  unsetenv("WATCHDOG_USEC");
  unsetenv("WATCHDOG_PID");
  usec = 7;
  CHECK(td_sd_watchdog_usec(&usec) == 0 && usec == 0, "no WATCHDOG_USEC: usec %" PRIu64, usec);

  setenv("WATCHDOG_USEC", "30000000", 1);
  setenv("WATCHDOG_PID", pid, 1);
  usec = 7;
  int rc = td_sd_watchdog_usec(&usec);
  CHECK(rc > 0 && usec == 30000000u, "WATCHDOG_USEC=30000000 for this pid: rc %d usec %" PRIu64, rc,
        usec);

  /* Without WATCHDOG_PID the interval is this process's too. */
  unsetenv("WATCHDOG_PID");
  usec = 7;
  rc = td_sd_watchdog_usec(&usec);
  CHECK(rc > 0 && usec == 30000000u, "no WATCHDOG_PID: rc %d usec %" PRIu64, rc, usec);

  /* Meant for another process (a parent that did not unset it). */
  setenv("WATCHDOG_PID", other, 1);
  usec = 7;
  rc = td_sd_watchdog_usec(&usec);
  CHECK(rc == 0 && usec == 0, "WATCHDOG_PID of another process: rc %d usec %" PRIu64, rc, usec);

  setenv("WATCHDOG_PID", pid, 1);
  setenv("WATCHDOG_USEC", "soon", 1);
  usec = 7;
  rc = td_sd_watchdog_usec(&usec);
  CHECK(rc < 0 && usec == 0, "WATCHDOG_USEC=soon: rc %d usec %" PRIu64, rc, usec);

  /* A NULL out-pointer is allowed. */
  setenv("WATCHDOG_USEC", "1000000", 1);
  CHECK(td_sd_watchdog_usec(NULL) > 0, "NULL usec");

  unsetenv("WATCHDOG_USEC");
  unsetenv("WATCHDOG_PID");
}

int main(void) {
  /* Not started by systemd: everything is a no-op returning 0, and even a
   * watchdog in the environment is not reported (nothing to ping). */
  unsetenv("NOTIFY_SOCKET");
  CHECK(td_sd_ready("x") == 0, "ready without NOTIFY_SOCKET");
  CHECK(td_sd_stopping() == 0, "stopping without NOTIFY_SOCKET");
  CHECK(td_sd_reloading() == 0, "reloading without NOTIFY_SOCKET");
  CHECK(td_sd_reloaded() == 0, "reloaded without NOTIFY_SOCKET");
  CHECK(td_sd_watchdog_ping() == 0, "watchdog ping without NOTIFY_SOCKET");
  CHECK(td_sd_status("x") == 0, "status without NOTIFY_SOCKET");
  setenv("WATCHDOG_USEC", "30000000", 1);
  uint64_t usec = 7;
  CHECK(td_sd_watchdog_usec(&usec) == 0 && usec == 0,
        "watchdog without NOTIFY_SOCKET: usec %" PRIu64, usec);
  unsetenv("WATCHDOG_USEC");

  /* A socket file, as systemd uses (/run/systemd/notify). */
  char dir[] = "/tmp/td-sdnotify-XXXXXX";
  CHECK(mkdtemp(dir) != NULL, "mkdtemp: %s", strerror(errno));
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  snprintf(sa.sun_path, sizeof sa.sun_path, "%s/notify", dir);
  int fd = bind_dgram(&sa, sizeof sa);
  CHECK(fd >= 0, "bind %s: %s", sa.sun_path, strerror(errno));
  if (fd >= 0) {
    setenv("NOTIFY_SOCKET", sa.sun_path, 1);
    check_messages(fd);
    check_watchdog();
    close(fd);
  }

  /* The socket is gone: an error, not a crash or a hang. */
  unlink(sa.sun_path);
  int rc = td_sd_ready("x");
  CHECK(rc < 0, "ready to a removed socket returned %d, want < 0", rc);
  rmdir(dir);
  unsetenv("NOTIFY_SOCKET");

  /* An abstract socket ("@name"), as container managers often use. */
  struct sockaddr_un ab = {.sun_family = AF_UNIX};
  char name[64];
  int len = snprintf(name, sizeof name, "td-sdnotify-%ld", (long)getpid());
  memcpy(ab.sun_path + 1, name, (size_t)len);
  fd = bind_dgram(&ab, (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)len));
  CHECK(fd >= 0, "bind @%s: %s", name, strerror(errno));
  if (fd >= 0) {
    char env[80];
    snprintf(env, sizeof env, "@%s", name);
    setenv("NOTIFY_SOCKET", env, 1);
    check_messages(fd);
    close(fd);
    unsetenv("NOTIFY_SOCKET");
  }
  return td_check_exit();
}
