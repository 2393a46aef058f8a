/* clm-cni on a Kubernetes node: the CNI plugin binary the container runtime runs (from
 * /opt/cni/bin), a small static program so that nodes need no Python. It hands the call to
 * the node's CLM IP-handover agent, which runs the plugin (services/ip_handover_agent/cni.py)
 * in the host's network namespace, and passes the answer back as CNI expects it.
 *
 * Wire format over the agent's Unix socket:
 *   request: "KEY=VALUE\0" for each CNI_* environment variable, "\0", then the network
 *            configuration from stdin; the request ends where this side shuts down writing.
 *   answer:  "<exit status>\0", then what goes to stdout (the CNI result or error object).
 *
 * CLM_CNI_SOCKET overrides the socket (default /run/clm/cni.sock).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define DEFAULT_SOCKET "/run/clm/cni.sock"
#define ERR_TRY_AGAIN 11 /* CNI's "try again later" */

extern char **environ;

static int write_all(int fd, const char *buf, size_t len) {
  while (len > 0) {
    ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);
    if (n < 0) { if (errno == EINTR) continue; return -1; }
    buf += n; len -= (size_t)n;
  }
  return 0;
}

/* A CNI error object on stdout, as the runtime expects from a failed plugin. */
static int fail(const char *msg, const char *path) {
  printf("{\"cniVersion\":\"1.0.0\",\"code\":%d,\"msg\":\"%s\",\"details\":\"%s: %s\"}\n",
         ERR_TRY_AGAIN, msg, path, strerror(errno));
  return 1;
}

int main(void) {
  const char *path = getenv("CLM_CNI_SOCKET");
  if (!path || !*path) path = DEFAULT_SOCKET;
  struct sockaddr_un addr = {.sun_family = AF_UNIX};
  if (strlen(path) >= sizeof addr.sun_path) { errno = ENAMETOOLONG; return fail("socket path too long", path); }
  strcpy(addr.sun_path, path);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0)
    return fail("the CLM IP-handover agent does not answer on this node (is its DaemonSet pod running?)", path);
  for (char **e = environ; *e; e++)
    if (strncmp(*e, "CNI_", 4) == 0 && write_all(fd, *e, strlen(*e) + 1) != 0) goto broken;
  if (write_all(fd, "", 1) != 0) goto broken;
  char buf[65536];
  for (;;) {
    ssize_t n = read(STDIN_FILENO, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) goto broken;
    if (n == 0) break;
    if (write_all(fd, buf, (size_t)n) != 0) goto broken;
  }
  shutdown(fd, SHUT_WR);

  /* The exit status, then stdout. */
  char status[16];
  size_t got = 0;
  while (got < sizeof status - 1) {
    ssize_t n = read(fd, status + got, 1);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) goto broken;
    if (status[got] == '\0') break;
    got++;
  }
  status[got] = '\0';
  for (;;) {
    ssize_t n = read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    fwrite(buf, 1, (size_t)n, stdout);
  }
  fflush(stdout);
  return atoi(status);

broken:
  return fail("the CLM IP-handover agent broke off the CNI call", path);
}
