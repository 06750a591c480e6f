/*
 * pogfs_notify.c: sends one datagram to the service manager's notification socket
 * (systemd's sd_notify protocol: "READY=1\nMAINPID=...", "STATUS=...", "STOPPING=1").
 * Node's dgram module has no Unix datagram sockets, so this is the one thing done in C.
 * A path starting with '@' names a socket in the abstract namespace (the '@' becomes a
 * NUL byte), as systemd hands out for NOTIFY_SOCKET.
 */
#define _GNU_SOURCE
#include <node_api.h>

#include <errno.h>
#include <stddef.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

/* Returns 0 or an errno. Non-blocking: a full queue is EAGAIN, never a stalled FUSE thread. */
static int send_notify(const char *path, size_t path_len, const char *msg, size_t msg_len) {
  struct sockaddr_un addr;
  memset(&addr, 0, sizeof addr);
  addr.sun_family = AF_UNIX;
  if (path_len == 0 || path_len >= sizeof addr.sun_path) return EINVAL;
  if (path[0] != '/' && path[0] != '@') return EAFNOSUPPORT; /* vsock: addresses are not ours to speak */
  memcpy(addr.sun_path, path, path_len);
  socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + path_len);
  if (path[0] == '@') addr.sun_path[0] = '\0';
  else len += 1; /* the terminating NUL of a file path */
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return errno;
  ssize_t n = sendto(fd, msg, msg_len, MSG_NOSIGNAL, (struct sockaddr *)&addr, len);
  int err = n < 0 ? errno : ((size_t)n == msg_len ? 0 : EMSGSIZE);
  close(fd);
  return err;
}

/* sdNotify(socketPath: string, message: string): number (0, or an errno). Registered by pogfs_fuse.c. */
napi_value pf_js_sd_notify(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2], out;
  char path[sizeof(((struct sockaddr_un *)0)->sun_path) + 1];
  char msg[4096];
  size_t path_len = 0, msg_len = 0;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 2) {
    napi_throw_type_error(env, NULL, "sdNotify(socketPath, message)");
    return NULL;
  }
  if (napi_get_value_string_utf8(env, argv[0], path, sizeof path, &path_len) != napi_ok ||
      napi_get_value_string_utf8(env, argv[1], msg, sizeof msg, &msg_len) != napi_ok) {
    napi_throw_type_error(env, NULL, "sdNotify: socketPath and message must be strings");
    return NULL;
  }
  /* A path or message that filled its buffer was cut: refuse rather than send it cut. */
  int err = path_len >= sizeof path - 1 || msg_len >= sizeof msg - 1 ? EMSGSIZE : send_notify(path, path_len, msg, msg_len);
  if (napi_create_int32(env, err, &out) != napi_ok) return NULL;
  return out;
}
