/* clm-runc: the OCI runtime binary of CLM's RuntimeClass handler (`clm-restore`), which
 * containerd's runc shim runs in place of runc for clone pods only.
 *
 * A clone pod's containers must never start fresh from their image: they are restored
 * from the checkpoint the source node sent. So `create` and `start` are asked of the
 * node's CLM checkpoint agent over a Unix socket; it answers with the command to run (the
 * same runc call for the pod's sandbox, `runc restore` for a container it has images for)
 * or with a refusal. Every other command (state, kill, delete, ...) goes straight to runc.
 *
 * Wire format, all strings NUL-terminated:
 *   request:  argument... ""                       (this program's argv[1..])
 *   answer:   "run" argument... ""   -> run it, then send its exit status: "<code>"
 *             "exit" "<code>" "<message>"          -> print the message, exit with code
 * The command runs as this process's child with its stdio, so a restored process writes
 * into the shim's pipes (the container's log) and, once runc exits, is the shim's child.
 *
 * CLM_RESTORE_SOCKET overrides the socket (default /run/clm/restore-handler.sock);
 * CLM_RUNC overrides the runc binary (default: runc on PATH).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#define DEFAULT_SOCKET "/run/clm/restore-handler.sock"
#define MAX_ANSWER (1 << 20)
#define MAX_ARGS 1024

static const char *runc(void) {
  const char *r = getenv("CLM_RUNC");
  return r && *r ? r : "runc";
}

static void exec_runc(char **argv) {
  argv[0] = (char *)runc();
  execvp(argv[0], argv);
  fprintf(stderr, "clm-runc: cannot run %s: %s\n", argv[0], strerror(errno));
  exit(127);
}

/* The runc subcommand: the first argument that is not a global option. */
static const char *subcommand(int argc, char **argv) {
  static const char *with_value[] = {"--root", "--log", "--log-format", "--criu", "--rootless", NULL};
  for (int i = 1; i < argc; i++) {
    if (strncmp(argv[i], "--", 2) != 0 && argv[i][0] != '-') return argv[i];
    if (strchr(argv[i], '=')) continue;
    for (const char **v = with_value; *v; v++)
      if (strcmp(argv[i], *v) == 0) { i++; break; }
  }
  return "";
}

static int write_all(int fd, const char *buf, size_t len) {
  while (len > 0) {
    /* MSG_NOSIGNAL: an agent that hung up is an error here, not a SIGPIPE (and no signal
     * disposition is changed, which runc would inherit). */
    ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);
    if (n < 0) { if (errno == EINTR) continue; return -1; }
    buf += n; len -= (size_t)n;
  }
  return 0;
}

int main(int argc, char **argv) {
  const char *cmd = subcommand(argc, argv);
  if (strcmp(cmd, "create") != 0 && strcmp(cmd, "start") != 0) exec_runc(argv);

  const char *path = getenv("CLM_RESTORE_SOCKET");
  if (!path || !*path) path = DEFAULT_SOCKET;
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_un addr = {.sun_family = AF_UNIX};
  if (strlen(path) >= sizeof addr.sun_path) { fprintf(stderr, "clm-runc: socket path too long: %s\n", path); return 1; }
  strcpy(addr.sun_path, path);
  if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
    fprintf(stderr,
            "clm-runc: cannot reach the CLM checkpoint agent at %s (%s): a clone pod's containers are "
            "only ever restored by it, never started fresh; is the checkpoint agent running on this node?\n",
            path, strerror(errno));
    return 1;
  }
  for (int i = 1; i < argc; i++)
    if (write_all(fd, argv[i], strlen(argv[i]) + 1) != 0) goto broken;
  if (write_all(fd, "", 1) != 0) goto broken;

  /* The answer ends with an empty string (run) or after three strings (exit). */
  static char answer[MAX_ANSWER];
  size_t len = 0;
  char *args[MAX_ARGS + 1];
  int nargs = 0;
  for (;;) {
    ssize_t n = read(fd, answer + len, sizeof answer - 1 - len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) goto broken;
    len += (size_t)n;
    answer[len] = '\0';
    /* Split what has arrived into strings. */
    nargs = 0;
    size_t at = 0;
    int complete = 0;
    while (at < len && nargs < MAX_ARGS) {
      char *s = answer + at;
      size_t slen = strnlen(s, len - at);
      if (at + slen == len) break; /* no NUL yet */
      at += slen + 1;
      if (strcmp(answer, "run") == 0 && slen == 0 && nargs > 0) { complete = 1; break; }
      args[nargs++] = s;
      if (strcmp(answer, "exit") == 0 && nargs == 3) { complete = 1; break; }
    }
    if (complete) break;
    if (len >= sizeof answer - 1) goto broken;
  }

  if (strcmp(args[0], "exit") == 0) {
    if (*args[2]) fprintf(stderr, "clm-runc: %s\n", args[2]);
    return atoi(args[1]);
  }
  if (strcmp(args[0], "run") != 0 || nargs < 2) goto broken;
  args[nargs] = NULL;
  if (strcmp(args[1], "runc") == 0) args[1] = (char *)runc();
  pid_t child = fork();
  if (child < 0) { perror("clm-runc: fork"); return 1; }
  if (child == 0) {
    execvp(args[1], args + 1);
    fprintf(stderr, "clm-runc: cannot run %s: %s\n", args[1], strerror(errno));
    _exit(127);
  }
  int status = 0;
  while (waitpid(child, &status, 0) < 0)
    if (errno != EINTR) { perror("clm-runc: waitpid"); return 1; }
  int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  char text[16];
  snprintf(text, sizeof text, "%d", code);
  write_all(fd, text, strlen(text) + 1); /* the agent may be gone: the exit status still stands */
  return code;

broken:
  fprintf(stderr, "clm-runc: the CLM checkpoint agent at %s broke off its answer to '%s'\n", path, cmd);
  return 1;
}
