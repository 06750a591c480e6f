/*
 * pogfs_fuse.c: a small N-API binding over libfuse 3's low-level (inode) API.
 *
 * Threading model
 *   - Requests are read on the JS thread itself: a uv_poll handle watches the
 *     (non-blocking) /dev/fuse descriptor in Node's event loop, and each wake-up reads
 *     and processes what the kernel has queued. A request therefore costs one wake-up of
 *     one thread; with a separate loop thread handing requests over it cost two, which
 *     measured about 90 us per round trip against 17 us for a reply made in C. The
 *     libfuse callbacks never block and never call into JS directly: they copy
 *     everything libfuse hands them (names, write payloads, the caller's context) into
 *     a pf_req, because that memory belongs to libfuse's receive buffer and is reused
 *     by the next read.
 *   - The pf_reqs go on a FIFO that is drained, inside a callback scope (so promise
 *     jobs run afterwards), at the end of each wake-up.
 *   - Each request handed to JS gets an id in a slot table (JS thread only). JS answers
 *     by calling reply*(handle, id, ...). The slot is cleared on the first reply, so a
 *     second reply (or a reply after the session died) finds nothing and is a no-op:
 *     every request is answered exactly once. fuse_reply_* is thread-safe.
 *   - Fixed-layout replies (attr, entry, open, statfs) are passed through a shared
 *     Float64Array ("scratch") instead of JS objects: reading 15 named properties per
 *     reply through N-API costs far more than JS storing 15 doubles.
 *   - When the kernel connection goes away (read gives ENODEV), the poll handle stops
 *     and an END item is queued last. On seeing it, the JS side drops any requests JS
 *     still holds, closes the poll handle (so Node can exit), unmounts/destroys the
 *     session and tells JS.
 */
#define _GNU_SOURCE
#include <fuse_lowlevel.h>
#include <node_api.h>

#include <errno.h>
#include <math.h>
#include <fcntl.h>
#include <pthread.h>
#include <uv.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>
#include <poll.h>
#include <time.h>

/* pogfs_notify.c: one datagram to the service manager (systemd's NOTIFY_SOCKET). */
napi_value pf_js_sd_notify(napi_env env, napi_callback_info info);

extern char **environ;

/* Handler indices in the JS handlers array. Keep in sync with `Op` in session.ts. */
enum {
  OP_INIT = 0, OP_LOOKUP, OP_FORGET, OP_GETATTR, OP_SETATTR, OP_READLINK, OP_MKNOD,
  OP_MKDIR, OP_UNLINK, OP_RMDIR, OP_SYMLINK, OP_RENAME, OP_LINK, OP_OPEN, OP_READ,
  OP_WRITE, OP_FLUSH, OP_RELEASE, OP_FSYNC, OP_OPENDIR, OP_READDIR, OP_RELEASEDIR,
  OP_FSYNCDIR, OP_STATFS, OP_SETXATTR, OP_GETXATTR, OP_LISTXATTR, OP_REMOVEXATTR,
  OP_ACCESS, OP_CREATE, OP_FALLOCATE, OP_LSEEK, OP_COPY_FILE_RANGE, OP_READDIRPLUS, OP_END, OP_ERROR,
  OP_COUNT
};
/* Queue-only kind: a forget_multi batch; forgets reach the OP_FORGET handler in runs (dispatch_forgets). */
#define OP_FORGET_MULTI 1000

/* Scratch (Float64Array) layout. Keep in sync with session.ts. */
enum {
  S_INO = 0, S_MODE, S_NLINK, S_UID, S_GID, S_RDEV, S_SIZE, S_BLOCKS,
  S_ATIME, S_ATIME_NS, S_MTIME, S_MTIME_NS, S_CTIME, S_CTIME_NS,
  S_ENTRY_TIMEOUT, S_ATTR_TIMEOUT, S_FH, S_OPEN_FLAGS, S_COUNT = 32
};
/* A readdirplus reply's attributes: one run of S_INO..S_ATTR_TIMEOUT per entry. */
#define DIRPLUS_STRIDE (S_ATTR_TIMEOUT + 1)
/* statfs reuses slots 0..8 in StatFs field order. */
#define OPEN_KEEP_CACHE 1
#define OPEN_DIRECT_IO 2
#define OPEN_NO_FLUSH 4
#define OPEN_CACHE_DIR 8

/* The handle the kernel holds is JS's fh shifted left by one; the low bit says "flush has
   nothing to do here" (OPEN_NO_FLUSH), so such a flush is answered in C without a JS
   round trip (it comes at every close, of every read-only open). JS handles stay below
   2^53, so the shifted value fits. Every fh the kernel sends back is decoded (fh_of). */
#define FH_NO_FLUSH 1u
static uint64_t fh_of(uint64_t kernel_fh) { return kernel_fh >> 1; }

#define SESSION_MAGIC 0x706f6766u /* "pogf" */
#define ONE_MIB (1024u * 1024u)

typedef struct pf_req {
  struct pf_req *next;
  fuse_req_t req; /* NULL for items that need no reply (init, forget, end) */
  int op;
  uint32_t uid, gid, pid, umask;
  uint64_t ino;  /* ino, or parent for name ops */
  uint64_t ino2; /* new parent (rename, link) */
  uint64_t fh;
  int has_fh;
  uint64_t off;  /* read/write/readdir/lseek/fallocate offset; source offset of a copy; nlookup for forget */
  size_t size;   /* reply buffer size for read/readdir/getxattr/listxattr; length of a fallocate or copy */
  uint64_t fh2;  /* copy_file_range: the destination's handle */
  uint64_t off2; /* copy_file_range: the destination offset */
  uint32_t mode;
  uint64_t rdev;
  int flags;     /* open/create/release flags, rename flags, xattr flags, access mask, datasync,
                    fallocate mode, lseek whence, copy_file_range flags */
  struct {
    int valid;
    uint32_t mode, uid, gid;
    uint64_t size;
    struct timespec atim, mtim, ctim;
  } sa;
  char *data;    /* malloc'd payload: write data, xattr value, forget_multi array */
  size_t datalen;
  const char *name, *name2; /* both point into names[] */
  size_t namelen, name2len;
  char names[];
} pf_req;

typedef struct {
  pf_req *r;
  uint32_t gen;
  uint32_t next_free;
} pf_slot;

#define NO_SLOT UINT32_MAX
#define SLOT_IDX_BITS 24
#define SLOT_IDX_MASK ((1u << SLOT_IDX_BITS) - 1)
#define SLOT_GEN_LIMIT (1u << 28) /* gen * 2^24 + idx stays below 2^52: exact in a double */

/* Inodes an unlink left unreachable (no name, no open handle), remembered to answer the
   kernel's write-back of their times (see ll_setattr); it comes right after the unlink,
   so a few suffice. */
#define GONE_SLOTS 64

typedef struct {
  uint64_t ino;
  struct stat st;        /* its attributes as the unlink left them, times as written back since */
  double attr_timeout;
} pf_gone;

typedef struct pf_session {
  uint32_t magic;
  napi_env env;
  struct fuse_session *se;
  char *mountpoint;
  uv_poll_t poll;              /* watches /dev/fuse in Node's event loop */
  struct fuse_buf fbuf;        /* libfuse's receive buffer, reused for every request */
  napi_async_context actx;     /* callback scope for calls into JS from the poll callback */
  napi_ref handlers_ref;
  napi_ref scratch_ref;
  double *scratch;

  pf_req *qhead, *qtail;

  pf_slot *slots;
  uint32_t nslots, free_head;

  uint32_t max_write;
  int writeback;
  int readdirplus;             /* JS serves readdirplus: ask the kernel for it */
  double neg_timeout;
  int spin;                    /* poll /dev/fuse a while after each wake-up (more than one CPU) */
  pf_gone gone[GONE_SLOTS];    /* inodes gone at their last unlink (a ring; ino 0: empty) */
  unsigned gone_next;
  atomic_int security_xattrs;
  atomic_int notifying; /* cache invalidations running on worker threads; finish() waits for them */

  int loop_rc;
  int closing;        /* env teardown began */
  int loop_done;      /* the connection is gone: END is queued, nothing more is read */
  int ended;          /* finish() ran: session destroyed */
  int js_released;    /* the JS handle was garbage-collected */
  int poll_closed;    /* libuv is done with the poll handle embedded in s */
  pf_req end_item;  /* preallocated so that the end notification cannot fail */
} pf_session;

/* ---------------------------------------------------------------------------------- */
/* libfuse log capture: during mount, libfuse's messages become the JS error message. */

static __thread char *cap_buf;
static __thread size_t cap_len;
static __thread int capturing;

static void pf_log(enum fuse_log_level level, const char *fmt, va_list ap) {
  (void)level;
  if (!capturing) {
    vfprintf(stderr, fmt, ap);
    return;
  }
  char tmp[1024];
  int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
  if (n <= 0) return;
  if ((size_t)n >= sizeof tmp) n = sizeof tmp - 1;
  char *nb = realloc(cap_buf, cap_len + (size_t)n + 1);
  if (!nb) return;
  cap_buf = nb;
  memcpy(cap_buf + cap_len, tmp, (size_t)n);
  cap_len += (size_t)n;
  cap_buf[cap_len] = 0;
}

static void capture_begin(void) {
  free(cap_buf);
  cap_buf = NULL;
  cap_len = 0;
  capturing = 1;
}

/* Returns the captured text (caller frees) with trailing whitespace trimmed. */
static char *capture_end(void) {
  capturing = 0;
  char *b = cap_buf;
  cap_buf = NULL;
  while (b && cap_len > 0 && (b[cap_len - 1] == '\n' || b[cap_len - 1] == ' ')) b[--cap_len] = 0;
  cap_len = 0;
  return b;
}

/* ---------------------------------------------------------------------------------- */
/* Request records and the queue (loop thread -> JS thread). */

static void req_free(pf_req *r) {
  if (!r || r->op == OP_END) return; /* the END item is embedded in the session */
  free(r->data);
  free(r);
}

static pf_session *req_session(fuse_req_t req) { return (pf_session *)fuse_req_userdata(req); }

static pf_req *req_new(fuse_req_t req, int op, const char *n1, const char *n2) {
  size_t l1 = n1 ? strlen(n1) : 0, l2 = n2 ? strlen(n2) : 0;
  pf_req *r = calloc(1, sizeof *r + l1 + l2 + 2);
  if (!r) {
    if (req) fuse_reply_err(req, ENOMEM);
    return NULL;
  }
  r->req = req;
  r->op = op;
  char *p = r->names;
  if (n1) memcpy(p, n1, l1);
  p[l1] = 0;
  r->name = p;
  r->namelen = l1;
  p += l1 + 1;
  if (n2) memcpy(p, n2, l2);
  p[l2] = 0;
  r->name2 = p;
  r->name2len = l2;
  if (req) {
    /* The context lives in the request, which stays valid, but copying is cheap and
       keeps JS-thread code from reaching into libfuse structures. */
    const struct fuse_ctx *c = fuse_req_ctx(req);
    r->uid = c->uid;
    r->gid = c->gid;
    r->pid = (uint32_t)c->pid;
    r->umask = c->umask;
  }
  return r;
}

/* Producer and consumer are both the JS thread; the poll callback drains after reading. */
static void enqueue(pf_session *s, pf_req *r) {
  r->next = NULL;
  if (s->qtail) s->qtail->next = r;
  else s->qhead = r;
  s->qtail = r;
}

/* ---------------------------------------------------------------------------------- */
/* libfuse callbacks (called from fuse_session_process_buf). Copy, queue, return. */

static void ll_init(void *userdata, struct fuse_conn_info *conn) {
  pf_session *s = userdata;
  if (s->writeback && (conn->capable & FUSE_CAP_WRITEBACK_CACHE)) conn->want |= FUSE_CAP_WRITEBACK_CACHE;
  else conn->want &= ~FUSE_CAP_WRITEBACK_CACHE;
  if (conn->capable & FUSE_CAP_PARALLEL_DIROPS) conn->want |= FUSE_CAP_PARALLEL_DIROPS;
  if (conn->capable & FUSE_CAP_ASYNC_READ) conn->want |= FUSE_CAP_ASYNC_READ;
  /* Symlink targets never change in place, so the kernel may cache them. */
  if (conn->capable & FUSE_CAP_CACHE_SYMLINKS) conn->want |= FUSE_CAP_CACHE_SYMLINKS;
  /* POSIX ACLs would make the kernel store/enforce system.posix_acl_* through us.
     ATOMIC_O_TRUNC would hand O_TRUNC to open() instead of sending setattr(size=0);
     the JS contract has open() never truncate. HANDLE_KILLPRIV would make us clear
     suid/sgid on write/chown; without it the kernel sends an explicit setattr. */
  conn->want &= ~(FUSE_CAP_POSIX_ACL | FUSE_CAP_ATOMIC_O_TRUNC | FUSE_CAP_HANDLE_KILLPRIV);
  /* This mount is the only writer: attribute replies never mean "someone else changed
     the data", so a new mtime must not throw the page cache away (keep_cache rules). */
  conn->want &= ~FUSE_CAP_AUTO_INVAL_DATA;
  /* One readdirplus fills a listing's entries and their attributes, so a walk that stats
     every name (find, ls -l, rm -rf, a media scanner) costs no lookup request per name.
     Always, not adaptively (libfuse's default, READDIRPLUS_AUTO): the adaptive kernel
     asks for attributes in the first buffer of a listing only, and a program reads the
     whole listing before it stats the names, so the rest of a large directory went back
     to one lookup per name. A lookup answered inside JS costs far less than one that
     crosses the kernel. */
  if (s->readdirplus && (conn->capable & FUSE_CAP_READDIRPLUS)) conn->want |= FUSE_CAP_READDIRPLUS;
  else conn->want &= ~FUSE_CAP_READDIRPLUS;
  conn->want &= ~FUSE_CAP_READDIRPLUS_AUTO;

  /* libfuse has already capped conn->max_write to its receive buffer (256 pages with
     FUSE_MAX_PAGES, 32 without). Never raise it past that: the kernel would send writes
     that don't fit the buffer. After this callback libfuse sets max_pages from it. */
  if (s->max_write < conn->max_write) conn->max_write = s->max_write;
  /* Sent as-is in the INIT reply; the kernel uses min(bdi read_ahead_kb, this). */
  conn->max_readahead = ONE_MIB;
  conn->max_background = 64;
  conn->congestion_threshold = 48;
  conn->time_gran = 1;

  pf_req *r = calloc(1, sizeof *r);
  if (r) {
    r->op = OP_INIT;
    enqueue(s, r);
  }
}

static void ll_destroy(void *userdata) {
  (void)userdata; /* JS learns about the end from the END item, after the loop thread is gone. */
}

static void ll_lookup(fuse_req_t req, fuse_ino_t parent, const char *name) {
  pf_req *r = req_new(req, OP_LOOKUP, name, NULL);
  if (!r) return;
  r->ino = parent;
  enqueue(req_session(req), r);
}

/* Where `ino` is among the gone inodes (see ll_setattr), -1 if not. */
static int gone_slot(pf_session *s, uint64_t ino) {
  for (int i = 0; i < GONE_SLOTS; i++)
    if (s->gone[i].ino == ino) return i;
  return -1;
}

/* The kernel is done with the inode: its number is forgotten here too. */
static void forget_gone(pf_session *s, uint64_t ino) {
  int i = gone_slot(s, ino);
  if (i >= 0) s->gone[i].ino = 0;
}

static void ll_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup) {
  pf_session *s = req_session(req);
  forget_gone(s, ino);
  /* No reply is sent for forget; release libfuse's request right away. */
  fuse_reply_none(req);
  pf_req *r = calloc(1, sizeof *r);
  if (!r) return; /* only costs the FS an inode it keeps too long */
  r->op = OP_FORGET;
  r->ino = ino;
  r->off = nlookup;
  enqueue(s, r);
}

static void ll_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets) {
  pf_session *s = req_session(req);
  for (size_t i = 0; i < count; i++) forget_gone(s, forgets[i].ino);
  pf_req *r = calloc(1, sizeof *r);
  char *copy = count ? malloc(count * sizeof *forgets) : NULL;
  if (r && copy) {
    memcpy(copy, forgets, count * sizeof *forgets);
    r->op = OP_FORGET_MULTI;
    r->data = copy;
    r->datalen = count;
  } else {
    free(r);
    free(copy);
    r = NULL;
  }
  fuse_reply_none(req);
  if (r) enqueue(s, r);
}

static void set_fh(pf_req *r, struct fuse_file_info *fi) {
  if (fi) {
    r->fh = fh_of(fi->fh);
    r->has_fh = 1;
  }
}

static void ll_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  pf_req *r = req_new(req, OP_GETATTR, NULL, NULL);
  if (!r) return;
  r->ino = ino;
  set_fh(r, fi);
  enqueue(req_session(req), r);
}

#define TIMES_ONLY (FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME | FUSE_SET_ATTR_ATIME_NOW | FUSE_SET_ATTR_MTIME_NOW | FUSE_SET_ATTR_CTIME)

static void ll_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
                       struct fuse_file_info *fi) {
  pf_session *s = req_session(req);
  /* With the writeback cache the kernel keeps times itself and writes an unlinked
     inode's new ctime back at once (a setattr of times per file an `rm -r` removes), and
     again at syncfs if it is still dirty. When that unlink left the inode unreachable (no
     name, no handle open), nobody can ever see its times: acknowledge them here with the
     attributes the unlink left, without JS. (An error would be kept against the whole
     filesystem: the next syncfs would fail with it.) */
  int gone = (to_set & ~TIMES_ONLY) == 0 ? gone_slot(s, ino) : -1;
  if (gone >= 0) {
    pf_gone *g = &s->gone[gone];
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    if (to_set & FUSE_SET_ATTR_ATIME_NOW) g->st.st_atim = now;
    else if (to_set & FUSE_SET_ATTR_ATIME) g->st.st_atim = attr->st_atim;
    if (to_set & FUSE_SET_ATTR_MTIME_NOW) g->st.st_mtim = now;
    else if (to_set & FUSE_SET_ATTR_MTIME) g->st.st_mtim = attr->st_mtim;
    if (to_set & FUSE_SET_ATTR_CTIME) g->st.st_ctim = attr->st_ctim;
    fuse_reply_attr(req, &g->st, g->attr_timeout);
    return;
  }
  pf_req *r = req_new(req, OP_SETATTR, NULL, NULL);
  if (!r) return;
  r->ino = ino;
  set_fh(r, fi);
  r->sa.valid = to_set;
  r->sa.mode = attr->st_mode;
  r->sa.uid = attr->st_uid;
  r->sa.gid = attr->st_gid;
  r->sa.size = (uint64_t)attr->st_size;
  r->sa.atim = attr->st_atim;
  r->sa.mtim = attr->st_mtim;
  r->sa.ctim = attr->st_ctim;
  enqueue(s, r);
}

static void ll_readlink(fuse_req_t req, fuse_ino_t ino) {
  pf_req *r = req_new(req, OP_READLINK, NULL, NULL);
  if (!r) return;
  r->ino = ino;
  enqueue(req_session(req), r);
}

static void ll_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, dev_t rdev) {
  pf_req *r = req_new(req, OP_MKNOD, name, NULL);
  if (!r) return;
  r->ino = parent;
  r->mode = mode;
  r->rdev = rdev;
  enqueue(req_session(req), r);
}

static void ll_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode) {
  pf_req *r = req_new(req, OP_MKDIR, name, NULL);
  if (!r) return;
  r->ino = parent;
  r->mode = mode;
  enqueue(req_session(req), r);
}

static void ll_unlink(fuse_req_t req, fuse_ino_t parent, const char *name) {
  pf_req *r = req_new(req, OP_UNLINK, name, NULL);
  if (!r) return;
  r->ino = parent;
  enqueue(req_session(req), r);
}

static void ll_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name) {
  pf_req *r = req_new(req, OP_RMDIR, name, NULL);
  if (!r) return;
  r->ino = parent;
  enqueue(req_session(req), r);
}

static void ll_symlink(fuse_req_t req, const char *link, fuse_ino_t parent, const char *name) {
  pf_req *r = req_new(req, OP_SYMLINK, link, name); /* name = target, name2 = new entry */
  if (!r) return;
  r->ino = parent;
  enqueue(req_session(req), r);
}

static void ll_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
                      const char *newname, unsigned int flags) {
  pf_req *r = req_new(req, OP_RENAME, name, newname);
  if (!r) return;
  r->ino = parent;
  r->ino2 = newparent;
  r->flags = (int)flags;
  enqueue(req_session(req), r);
}

static void ll_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char *newname) {
  pf_req *r = req_new(req, OP_LINK, newname, NULL);
  if (!r) return;
  r->ino = ino;
  r->ino2 = newparent;
  enqueue(req_session(req), r);
}

static void ll_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  pf_req *r = req_new(req, OP_OPEN, NULL, NULL);
  if (!r) return;
  r->ino = ino;
  r->flags = fi->flags;
  enqueue(req_session(req), r);
}

/* A request for `size` bytes at `off` of an open file or directory (read, readdir, readdirplus). */
static void enqueue_range(fuse_req_t req, int op, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi) {
  pf_req *r = req_new(req, op, NULL, NULL);
  if (!r) return;
  r->ino = ino;
  set_fh(r, fi);
  r->size = size;
  r->off = (uint64_t)off;
  enqueue(req_session(req), r);
}

static void ll_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi) {
  enqueue_range(req, OP_READ, ino, size, off, fi);
}

static void ll_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
                     struct fuse_file_info *fi) {
  /* The payload sits in libfuse's receive buffer, which the next read() overwrites.
     This malloc'd copy is the only one: JS gets it as an external Buffer. */
  char *copy = malloc(size ? size : 1);
  if (!copy) {
    fuse_reply_err(req, ENOMEM);
    return;
  }
  memcpy(copy, buf, size);
  pf_req *r = req_new(req, OP_WRITE, NULL, NULL);
  if (!r) {
    free(copy);
    return;
  }
  r->ino = ino;
  set_fh(r, fi);
  r->data = copy;
  r->datalen = size;
  r->off = (uint64_t)off;
  enqueue(req_session(req), r);
}

static void ll_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  if (fi->fh & FH_NO_FLUSH) {
    fuse_reply_err(req, 0);
    return;
  }
  pf_req *r = req_new(req, OP_FLUSH, NULL, NULL);
  if (!r) return;
  r->ino = ino;
  set_fh(r, fi);
  enqueue(req_session(req), r);
}

static void ll_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  pf_req *r = req_new(req, OP_RELEASE, NULL, NULL);
  if (!r) return;
  r->ino = ino;
  set_fh(r, fi);
  r->flags = fi->flags;
  enqueue(req_session(req), r);
}

static void ll_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi) {
  pf_req *r = req_new(req, OP_FSYNC, NULL, NULL);
  if (!r) return;
  r->ino = ino;
  set_fh(r, fi);
  r->flags = datasync;
  enqueue(req_session(req), r);
}

static void ll_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  pf_req *r = req_new(req, OP_OPENDIR, NULL, NULL);
  if (!r) return;
  r->ino = ino;
  r->flags = fi->flags;
  enqueue(req_session(req), r);
}

static void ll_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi) {
  enqueue_range(req, OP_READDIR, ino, size, off, fi);
}

static void ll_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi) {
  enqueue_range(req, OP_READDIRPLUS, ino, size, off, fi);
}

static void ll_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  pf_req *r = req_new(req, OP_RELEASEDIR, NULL, NULL);
  if (!r) return;
  r->ino = ino;
  set_fh(r, fi);
  enqueue(req_session(req), r);
}

static void ll_fsyncdir(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi) {
  pf_req *r = req_new(req, OP_FSYNCDIR, NULL, NULL);
  if (!r) return;
  r->ino = ino;
  set_fh(r, fi);
  r->flags = datasync;
  enqueue(req_session(req), r);
}

static void ll_statfs(fuse_req_t req, fuse_ino_t ino) {
  pf_req *r = req_new(req, OP_STATFS, NULL, NULL);
  if (!r) return;
  r->ino = ino;
  enqueue(req_session(req), r);
}

static int is_security_name(const char *name) { return strncmp(name, "security.", 9) == 0; }

static void ll_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name, const char *value,
                        size_t size, int flags) {
  pf_session *s = req_session(req);
  /* Safety net for the getxattr fast path: once anyone stores a security.* attribute
     (even if the FS then refuses it), stop answering security.* lookups from C. */
  if (is_security_name(name)) atomic_store(&s->security_xattrs, 1);
  char *copy = malloc(size ? size : 1);
  if (!copy) {
    fuse_reply_err(req, ENOMEM);
    return;
  }
  memcpy(copy, value, size);
  pf_req *r = req_new(req, OP_SETXATTR, name, NULL);
  if (!r) {
    free(copy);
    return;
  }
  r->ino = ino;
  r->data = copy;
  r->datalen = size;
  r->flags = flags;
  enqueue(s, r);
}

static void ll_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size) {
  pf_session *s = req_session(req);
  /* The kernel asks for security.capability on every write() (file_remove_privs).
     While the FS holds no security.* attributes, answer here, without a JS round trip. */
  if (!atomic_load(&s->security_xattrs) && is_security_name(name)) {
    fuse_reply_err(req, ENODATA);
    return;
  }
  pf_req *r = req_new(req, OP_GETXATTR, name, NULL);
  if (!r) return;
  r->ino = ino;
  r->size = size;
  enqueue(s, r);
}

static void ll_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size) {
  pf_req *r = req_new(req, OP_LISTXATTR, NULL, NULL);
  if (!r) return;
  r->ino = ino;
  r->size = size;
  enqueue(req_session(req), r);
}

static void ll_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name) {
  pf_req *r = req_new(req, OP_REMOVEXATTR, name, NULL);
  if (!r) return;
  r->ino = ino;
  enqueue(req_session(req), r);
}

static void ll_access(fuse_req_t req, fuse_ino_t ino, int mask) {
  pf_req *r = req_new(req, OP_ACCESS, NULL, NULL);
  if (!r) return;
  r->ino = ino;
  r->flags = mask;
  enqueue(req_session(req), r);
}

static void ll_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
                      struct fuse_file_info *fi) {
  pf_req *r = req_new(req, OP_CREATE, name, NULL);
  if (!r) return;
  r->ino = parent;
  r->mode = mode;
  r->flags = fi->flags;
  enqueue(req_session(req), r);
}

static void ll_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t offset, off_t length,
                         struct fuse_file_info *fi) {
  pf_req *r = req_new(req, OP_FALLOCATE, NULL, NULL);
  if (!r) return;
  r->ino = ino;
  set_fh(r, fi);
  r->flags = mode;
  r->off = (uint64_t)offset;
  r->size = (size_t)length;
  enqueue(req_session(req), r);
}

static void ll_lseek(fuse_req_t req, fuse_ino_t ino, off_t off, int whence, struct fuse_file_info *fi) {
  pf_req *r = req_new(req, OP_LSEEK, NULL, NULL);
  if (!r) return;
  r->ino = ino;
  set_fh(r, fi);
  r->flags = whence;
  r->off = (uint64_t)off;
  enqueue(req_session(req), r);
}

static void ll_copy_file_range(fuse_req_t req, fuse_ino_t ino_in, off_t off_in, struct fuse_file_info *fi_in,
                               fuse_ino_t ino_out, off_t off_out, struct fuse_file_info *fi_out, size_t len,
                               int flags) {
  pf_req *r = req_new(req, OP_COPY_FILE_RANGE, NULL, NULL);
  if (!r) return;
  r->ino = ino_in;
  set_fh(r, fi_in);
  r->off = (uint64_t)off_in;
  r->ino2 = ino_out;
  r->fh2 = fi_out ? fh_of(fi_out->fh) : 0;
  r->off2 = (uint64_t)off_out;
  /* The reply's count is 32 bits (fuse_write_out.size): a longer copy would come back
     wrapped (4 GiB as 0, which cp takes for end of file). Copy at most what the count can
     say, page aligned as newer kernels clamp it; the caller loops for the rest. */
  const size_t max_copy = (size_t)UINT32_MAX & ~(size_t)4095;
  r->size = len > max_copy ? max_copy : len;
  r->flags = flags;
  enqueue(req_session(req), r);
}

static const struct fuse_lowlevel_ops ll_ops = {
  .init = ll_init,
  .destroy = ll_destroy,
  .lookup = ll_lookup,
  .forget = ll_forget,
  .getattr = ll_getattr,
  .setattr = ll_setattr,
  .readlink = ll_readlink,
  .mknod = ll_mknod,
  .mkdir = ll_mkdir,
  .unlink = ll_unlink,
  .rmdir = ll_rmdir,
  .symlink = ll_symlink,
  .rename = ll_rename,
  .link = ll_link,
  .open = ll_open,
  .read = ll_read,
  .write = ll_write,
  .flush = ll_flush,
  .release = ll_release,
  .fsync = ll_fsync,
  .opendir = ll_opendir,
  .readdir = ll_readdir,
  .readdirplus = ll_readdirplus,
  .releasedir = ll_releasedir,
  .fsyncdir = ll_fsyncdir,
  .statfs = ll_statfs,
  .setxattr = ll_setxattr,
  .getxattr = ll_getxattr,
  .listxattr = ll_listxattr,
  .removexattr = ll_removexattr,
  .access = ll_access,
  .create = ll_create,
  .fallocate = ll_fallocate,
  .lseek = ll_lseek,
  .copy_file_range = ll_copy_file_range,
  .forget_multi = ll_forget_multi,
};

static void run_queue(pf_session *s);

/* Busy-polling after a wake-up. A program that works through the mount one call at a
   time (tar, rm -r, a scanner) sends its next request a few microseconds after our
   reply; when the daemon has gone back to sleep meanwhile, waking it costs more than
   answering (a request answered in C took 58 us with the daemon sleeping between
   requests, 23 us polling for 30 us, on a 2-core VM). So after the last request of a
   wake-up the JS thread keeps reading for up to SPIN_NS, unless the event loop has
   other work (a timer due, an immediate, an I/O or worker completion), and gives the
   loop its turn at least every SPIN_MAX_NS. Only with more than one CPU online: on a
   single CPU the spin would only delay the program it is waiting for. */
#define SPIN_NS 50000ull
#define SPIN_MAX_NS 1000000ull

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Whether Node's event loop has something to do besides /dev/fuse. */
static int loop_has_work(uv_loop_t *loop) {
  if (uv_backend_timeout(loop) == 0) return 1;
  struct pollfd p = { .fd = uv_backend_fd(loop), .events = POLLIN };
  return poll(&p, 1, 0) > 0;
}

#define CONNECTION_GONE (-1)

/* Reads and processes up to `max` queued requests; how many, or CONNECTION_GONE when the
   connection went away or the read failed. */
static int read_requests(pf_session *s, int max) {
  int got = 0;
  for (int i = 0; i < max; i++) {
    int res = fuse_session_receive_buf(s->se, &s->fbuf);
    if (res == -EINTR) continue;
    if (res == -EAGAIN) break;
    if (res <= 0 || fuse_session_exited(s->se)) {
      /* 0: ENODEV, the kernel released the mount; < 0: a read error */
      s->loop_rc = res < 0 ? res : 0;
      return CONNECTION_GONE;
    }
    got++;
    fuse_session_process_buf(s->se, &s->fbuf);
    if (fuse_session_exited(s->se)) return CONNECTION_GONE;
  }
  return got;
}

/* Reads what the kernel has queued (bounded, so timers and I/O of the rest of the
   process get their turn) and hands it to JS; then polls for more (see SPIN_NS). */
static void on_readable(uv_poll_t *h, int status, int events) {
  (void)events;
  pf_session *s = h->data;
  if (s->loop_done) return;
  int done = status < 0 || read_requests(s, 64) == CONNECTION_GONE;
  run_queue(s);
  if (!done && s->spin) {
    uint64_t start = now_ns(), last = start;
    for (;;) {
      uint64_t t = now_ns();
      if (t - last > SPIN_NS || t - start > SPIN_MAX_NS || s->closing || s->loop_done || s->ended) break;
      int n = read_requests(s, 64);
      done = n == CONNECTION_GONE;
      if (n != 0) run_queue(s);
      if (done) break;
      if (n > 0) last = now_ns();
      else if (loop_has_work(h->loop)) break;
    }
  }
  if (done) {
    s->loop_done = 1;
    uv_poll_stop(&s->poll);
    /* Replies JS sends to the dead connection are then dropped quietly. */
    fuse_session_exit(s->se);
    s->end_item.op = OP_END;
    enqueue(s, &s->end_item);
    run_queue(s);
  }
}

/* ---------------------------------------------------------------------------------- */
/* Slot table: request ids handed to JS (JS thread only). */

static double slot_put(pf_session *s, pf_req *r) {
  if (s->free_head == NO_SLOT) {
    uint32_t n = s->nslots ? s->nslots * 2 : 256;
    if (n > SLOT_IDX_MASK + 1u) return -1;
    pf_slot *ns = realloc(s->slots, n * sizeof *ns);
    if (!ns) return -1;
    for (uint32_t i = s->nslots; i < n; i++) {
      ns[i].r = NULL;
      ns[i].gen = 1;
      ns[i].next_free = i + 1 < n ? i + 1 : NO_SLOT;
    }
    s->slots = ns;
    s->free_head = s->nslots;
    s->nslots = n;
  }
  uint32_t idx = s->free_head;
  s->free_head = s->slots[idx].next_free;
  s->slots[idx].r = r;
  return (double)s->slots[idx].gen * (double)(1u << SLOT_IDX_BITS) + (double)idx;
}

static void slot_release(pf_session *s, uint32_t idx) {
  s->slots[idx].r = NULL;
  s->slots[idx].gen = s->slots[idx].gen + 1 >= SLOT_GEN_LIMIT ? 1 : s->slots[idx].gen + 1;
  s->slots[idx].next_free = s->free_head;
  s->free_head = idx;
}

/* Claims the request behind id; NULL if unknown or already answered. */
static pf_req *slot_take(pf_session *s, double id) {
  if (!(id >= 0) || id >= 4503599627370496.0 || id != floor(id)) return NULL;
  uint64_t v = (uint64_t)id;
  uint32_t idx = (uint32_t)(v & SLOT_IDX_MASK), gen = (uint32_t)(v >> SLOT_IDX_BITS);
  if (idx >= s->nslots || s->slots[idx].gen != gen || !s->slots[idx].r) return NULL;
  pf_req *r = s->slots[idx].r;
  slot_release(s, idx);
  return r;
}

/* ---------------------------------------------------------------------------------- */
/* JS thread: drain the queue and call the handlers. */

typedef struct {
  napi_env env;
  napi_value v[24];
  size_t n;
  int ok;
} args_t;

static void a_num(args_t *a, double x) {
  if (napi_create_double(a->env, x, &a->v[a->n]) != napi_ok) a->ok = 0;
  a->n++;
}
static void a_bool(args_t *a, int b) {
  if (napi_get_boolean(a->env, b != 0, &a->v[a->n]) != napi_ok) a->ok = 0;
  a->n++;
}
static void a_undef(args_t *a) {
  if (napi_get_undefined(a->env, &a->v[a->n]) != napi_ok) a->ok = 0;
  a->n++;
}
static void a_bytes(args_t *a, const char *p, size_t len) {
  void *d;
  if (napi_create_buffer_copy(a->env, len, len ? p : "", &d, &a->v[a->n]) != napi_ok) a->ok = 0;
  a->n++;
}
static void a_fh(args_t *a, const pf_req *r) {
  if (r->has_fh) a_num(a, (double)r->fh);
  else a_undef(a);
}
static void a_ctx(args_t *a, const pf_req *r) {
  a_num(a, r->uid);
  a_num(a, r->gid);
  a_num(a, r->pid);
  a_num(a, r->umask);
}
static void free_external(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  free(data);
}
/* Hands r->data to JS without copying; the Buffer's finalizer frees it. */
static void a_payload(args_t *a, pf_req *r) {
  napi_value *slot = &a->v[a->n++];
  if (r->datalen == 0) {
    void *d;
    if (napi_create_buffer(a->env, 0, &d, slot) != napi_ok) a->ok = 0;
    return;
  }
  if (napi_create_external_buffer(a->env, r->datalen, r->data, free_external, NULL, slot) == napi_ok)
    r->data = NULL;
  else
    a->ok = 0;
}

static void report_exception(napi_env env, napi_value handlers) {
  napi_value exc, fn, undef;
  if (napi_get_and_clear_last_exception(env, &exc) != napi_ok) return;
  if (napi_get_element(env, handlers, OP_ERROR, &fn) != napi_ok) return;
  napi_get_undefined(env, &undef);
  if (napi_call_function(env, undef, fn, 1, &exc, NULL) != napi_ok)
    napi_get_and_clear_last_exception(env, &exc); /* nowhere left to report it */
}

/* Returns 0 if the handler could not be called or threw. */
static int call_handler(napi_env env, napi_value handlers, int op, args_t *a) {
  napi_value fn, undef;
  if (napi_get_element(env, handlers, (uint32_t)op, &fn) != napi_ok ||
      napi_get_undefined(env, &undef) != napi_ok ||
      napi_call_function(env, undef, fn, a->n, a->v, NULL) != napi_ok) {
    report_exception(env, handlers);
    return 0;
  }
  return 1;
}

static void dispatch_request(napi_env env, pf_session *s, napi_value handlers, pf_req *r) {
  args_t a = { .env = env, .n = 0, .ok = 1 };
  double id = slot_put(s, r);
  if (id < 0) {
    fuse_reply_err(r->req, ENOMEM);
    req_free(r);
    return;
  }
  a_num(&a, id);
  switch (r->op) {
  case OP_LOOKUP: case OP_UNLINK: case OP_RMDIR:
    a_num(&a, (double)r->ino); a_bytes(&a, r->name, r->namelen); a_ctx(&a, r); break;
  case OP_GETATTR:
    a_num(&a, (double)r->ino); a_fh(&a, r); a_ctx(&a, r); break;
  case OP_SETATTR:
    a_num(&a, (double)r->ino); a_fh(&a, r);
    a_num(&a, r->sa.valid); a_num(&a, r->sa.mode); a_num(&a, r->sa.uid); a_num(&a, r->sa.gid);
    a_num(&a, (double)r->sa.size);
    a_num(&a, (double)r->sa.atim.tv_sec); a_num(&a, (double)r->sa.atim.tv_nsec);
    a_num(&a, (double)r->sa.mtim.tv_sec); a_num(&a, (double)r->sa.mtim.tv_nsec);
    a_num(&a, (double)r->sa.ctim.tv_sec); a_num(&a, (double)r->sa.ctim.tv_nsec);
    a_ctx(&a, r); break;
  case OP_READLINK: case OP_LISTXATTR:
    a_num(&a, (double)r->ino); a_ctx(&a, r); break;
  case OP_MKNOD:
    a_num(&a, (double)r->ino); a_bytes(&a, r->name, r->namelen); a_num(&a, r->mode);
    a_num(&a, (double)r->rdev); a_ctx(&a, r); break;
  case OP_MKDIR:
    a_num(&a, (double)r->ino); a_bytes(&a, r->name, r->namelen); a_num(&a, r->mode); a_ctx(&a, r); break;
  case OP_SYMLINK:
    a_bytes(&a, r->name, r->namelen); a_num(&a, (double)r->ino); a_bytes(&a, r->name2, r->name2len);
    a_ctx(&a, r); break;
  case OP_RENAME:
    a_num(&a, (double)r->ino); a_bytes(&a, r->name, r->namelen); a_num(&a, (double)r->ino2);
    a_bytes(&a, r->name2, r->name2len); a_num(&a, r->flags); a_ctx(&a, r); break;
  case OP_LINK:
    a_num(&a, (double)r->ino); a_num(&a, (double)r->ino2); a_bytes(&a, r->name, r->namelen);
    a_ctx(&a, r); break;
  case OP_OPEN: case OP_OPENDIR:
    a_num(&a, (double)r->ino); a_num(&a, r->flags); a_ctx(&a, r); break;
  case OP_READ:
    /* The caller too: the Drive view counts downloads per program. */
    a_num(&a, (double)r->ino); a_num(&a, (double)r->fh); a_num(&a, (double)r->size);
    a_num(&a, (double)r->off); a_ctx(&a, r); break;
  case OP_WRITE:
    a_num(&a, (double)r->ino); a_num(&a, (double)r->fh); a_payload(&a, r); a_num(&a, (double)r->off);
    a_ctx(&a, r); break;
  case OP_FLUSH: case OP_RELEASEDIR:
    a_num(&a, (double)r->ino); a_num(&a, (double)r->fh); break;
  case OP_RELEASE:
    a_num(&a, (double)r->ino); a_num(&a, (double)r->fh); a_num(&a, r->flags); break;
  case OP_FSYNC: case OP_FSYNCDIR:
    a_num(&a, (double)r->ino); a_num(&a, (double)r->fh); a_bool(&a, r->flags); break;
  case OP_READDIR:
    a_num(&a, (double)r->ino); a_num(&a, (double)r->fh); a_num(&a, (double)r->off);
    a_num(&a, (double)r->size); break;
  case OP_READDIRPLUS:
    a_num(&a, (double)r->ino); a_num(&a, (double)r->fh); a_num(&a, (double)r->off);
    a_num(&a, (double)r->size); a_ctx(&a, r); break;
  case OP_STATFS:
    a_num(&a, (double)r->ino); break;
  case OP_SETXATTR:
    a_num(&a, (double)r->ino); a_bytes(&a, r->name, r->namelen); a_payload(&a, r);
    a_num(&a, r->flags); a_ctx(&a, r); break;
  case OP_GETXATTR: case OP_REMOVEXATTR:
    a_num(&a, (double)r->ino); a_bytes(&a, r->name, r->namelen); a_ctx(&a, r); break;
  case OP_ACCESS:
    a_num(&a, (double)r->ino); a_num(&a, r->flags); a_ctx(&a, r); break;
  case OP_CREATE:
    a_num(&a, (double)r->ino); a_bytes(&a, r->name, r->namelen); a_num(&a, r->mode);
    a_num(&a, r->flags); a_ctx(&a, r); break;
  case OP_FALLOCATE:
    a_num(&a, (double)r->ino); a_num(&a, (double)r->fh); a_num(&a, r->flags); a_num(&a, (double)r->off);
    a_num(&a, (double)r->size); break;
  case OP_LSEEK:
    a_num(&a, (double)r->ino); a_num(&a, (double)r->fh); a_num(&a, (double)r->off); a_num(&a, r->flags); break;
  case OP_COPY_FILE_RANGE:
    a_num(&a, (double)r->ino); a_num(&a, (double)r->fh); a_num(&a, (double)r->off);
    a_num(&a, (double)r->ino2); a_num(&a, (double)r->fh2); a_num(&a, (double)r->off2);
    a_num(&a, (double)r->size); a_num(&a, r->flags); break;
  default:
    a.ok = 0;
  }
  int called = a.ok && call_handler(env, handlers, r->op, &a);
  /* r may already be answered and freed by a synchronous handler: look it up again.
     If the handler didn't run or threw past the wrapper, nobody will answer: EIO. */
  pf_req *left = called ? NULL : slot_take(s, id);
  if (left) {
    fuse_reply_err(left->req, EIO);
    req_free(left);
  }
}

static int is_forget(const pf_req *r) { return r->op == OP_FORGET || r->op == OP_FORGET_MULTI; }

/* The run of forget items starting at r, handed to JS in one call as (ino, nlookup)
   pairs in a Float64Array: the kernel sends forgets by the thousand (rm -rf, memory
   pressure) and one call each was one N-API round trip each. Returns the first item
   after the run; the run's items are freed. */
static pf_req *dispatch_forgets(napi_env env, napi_value handlers, pf_req *r) {
  size_t n = 0;
  for (pf_req *q = r; q && is_forget(q); q = q->next) n += q->op == OP_FORGET_MULTI ? q->datalen : 1;
  napi_value ab, pairs;
  double *d = NULL;
  int ok = n > 0 && napi_create_arraybuffer(env, n * 2 * sizeof(double), (void **)&d, &ab) == napi_ok &&
           napi_create_typedarray(env, napi_float64_array, n * 2, ab, 0, &pairs) == napi_ok;
  size_t i = 0;
  while (r && is_forget(r)) {
    pf_req *next = r->next;
    if (ok) {
      if (r->op == OP_FORGET_MULTI) {
        const struct fuse_forget_data *f = (const void *)r->data;
        for (size_t k = 0; k < r->datalen; k++, i++) {
          d[2 * i] = (double)f[k].ino;
          d[2 * i + 1] = (double)f[k].nlookup;
        }
      } else {
        d[2 * i] = (double)r->ino;
        d[2 * i + 1] = (double)r->off;
        i++;
      }
    }
    req_free(r);
    r = next;
  }
  /* Without memory for the batch the FS only keeps some inodes too long. */
  if (ok) {
    args_t a = { .env = env, .n = 0, .ok = 1 };
    a.v[a.n++] = pairs;
    call_handler(env, handlers, OP_FORGET, &a);
  }
  return r;
}

static void free_session(pf_session *s) {
  free(s->slots);
  free(s->mountpoint);
  s->magic = 0;
  free(s);
}

/* Three owners: the session itself (until finish()), libuv (until the poll handle's
   close callback) and the JS handle. */
static void maybe_free(pf_session *s) {
  if (s->ended && s->poll_closed && s->js_released) free_session(s);
}

static void on_poll_closed(uv_handle_t *h) {
  pf_session *s = h->data;
  s->poll_closed = 1;
  maybe_free(s);
}

static void cleanup_hook(void *arg);

/* The connection has ended (END was queued last). */
static void finish(napi_env env, pf_session *s, napi_value handlers) {
  /* Closing the handle also lets the event loop (and so the process) end. */
  uv_close((uv_handle_t *)&s->poll, on_poll_closed);
  free(s->fbuf.mem);
  s->fbuf.mem = NULL;
  /* Requests JS still holds can't be answered usefully any more. Free them now, before
     the session goes away; their later replies find an empty slot and do nothing. */
  for (uint32_t i = 0; i < s->nslots; i++) {
    pf_req *r = s->slots[i].r;
    if (!r) continue;
    slot_release(s, i);
    fuse_reply_none(r->req);
    req_free(r);
  }
  /* Invalidations still running use s->se: let them end first. The connection is gone, so
     the kernel answers them at once (bounded anyway). */
  for (int i = 0; atomic_load(&s->notifying) > 0 && i < 5000; i++) usleep(1000);
  /* Closes /dev/fuse. If the loop died on an error while still mounted, this also
     detaches the mount; if the kernel already dropped the connection it does nothing. */
  fuse_session_unmount(s->se);
  fuse_session_destroy(s->se);
  s->se = NULL;
  s->ended = 1;
  napi_remove_env_cleanup_hook(env, cleanup_hook, s);

  napi_handle_scope scope;
  if (handlers && napi_open_handle_scope(env, &scope) == napi_ok) {
    args_t a = { .env = env, .n = 0, .ok = 1 };
    a_num(&a, s->loop_rc);
    if (a.ok) call_handler(env, handlers, OP_END, &a);
    napi_close_handle_scope(env, scope);
  }
  napi_delete_reference(env, s->handlers_ref);
  s->handlers_ref = NULL;
  napi_delete_reference(env, s->scratch_ref);
  s->scratch_ref = NULL;
  s->scratch = NULL;
}

static void drain(napi_env env, pf_session *s) {
  if (s->ended) return;
  pf_req *r = s->qhead;
  s->qhead = s->qtail = NULL;

  napi_value handlers = NULL;
  int have_handlers = napi_get_reference_value(env, s->handlers_ref, &handlers) == napi_ok;
  while (r) {
    pf_req *next = r->next;
    if (r->op == OP_END) {
      finish(env, s, handlers);
      return; /* nothing can follow END: it is queued last */
    }
    napi_handle_scope scope;
    if (!have_handlers || napi_open_handle_scope(env, &scope) != napi_ok) {
      if (r->req) fuse_reply_err(r->req, EIO);
      req_free(r);
    } else {
      if (is_forget(r)) {
        next = dispatch_forgets(env, handlers, r);
      } else if (r->op == OP_INIT) {
        args_t a = { .env = env, .n = 0, .ok = 1 };
        call_handler(env, handlers, OP_INIT, &a);
        req_free(r);
      } else {
        dispatch_request(env, s, handlers, r);
      }
      napi_close_handle_scope(env, scope);
    }
    r = next;
  }
}

/* Calls into JS from a libuv callback need a callback scope: without one, promise
   jobs and nextTicks that handlers schedule would wait for some unrelated callback. */
static void run_queue(pf_session *s) {
  if (!s->qhead || s->closing) return;
  napi_env env = s->env;
  napi_handle_scope hs;
  if (napi_open_handle_scope(env, &hs) != napi_ok) return;
  napi_value resource;
  napi_callback_scope cs;
  if (napi_create_object(env, &resource) == napi_ok &&
      napi_open_callback_scope(env, resource, s->actx, &cs) == napi_ok) {
    drain(env, s);
    napi_close_callback_scope(env, cs);
  }
  napi_close_handle_scope(env, hs);
  /* The async context outlives the callback scope that used it, then goes with END. */
  if (s->ended && s->actx) {
    napi_async_destroy(env, s->actx);
    s->actx = NULL;
  }
}

/* The process is going away with the mount still up. Detach the mount so it doesn't
   linger as "Transport endpoint is not connected"; the loop thread dies with the
   process. (Dirty pages the kernel still held for us are lost either way.) */
static void detach_mount(pf_session *s) {
  if (geteuid() == 0) {
    umount2(s->mountpoint, MNT_DETACH);
  } else {
    char *argv[] = { "fusermount3", "-u", "-q", "-z", "--", s->mountpoint, NULL };
    pid_t pid;
    if (posix_spawnp(&pid, "fusermount3", NULL, NULL, argv, environ) == 0) waitpid(pid, NULL, 0);
  }
}

/* Env teardown (worker exit, embedder shutdown). Node 20 does not run this on
   process.exit(); session.ts calls detach() from process.on('exit') for that. */
static void cleanup_hook(void *arg) {
  pf_session *s = arg;
  if (s->ended) return;
  s->closing = 1;
  detach_mount(s);
}

static void session_finalize(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  pf_session *s = data;
  s->js_released = 1;
  /* While mounted, the loop thread and the kernel still use s. If Node exits with the
     mount up, s is deliberately leaked: the loop thread may still be touching it. */
  maybe_free(s);
}

/* ---------------------------------------------------------------------------------- */
/* JS-facing functions. */

static napi_value js_bool(napi_env env, int b) {
  napi_value v;
  napi_get_boolean(env, b != 0, &v);
  return v;
}

static napi_value throw_type(napi_env env, const char *msg) {
  napi_throw_type_error(env, NULL, msg);
  return NULL;
}

static pf_session *get_session(napi_env env, napi_value v) {
  napi_valuetype t;
  void *p;
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_external) return NULL;
  if (napi_get_value_external(env, v, &p) != napi_ok || !p) return NULL;
  pf_session *s = p;
  return s->magic == SESSION_MAGIC ? s : NULL;
}

static uint64_t d2u64(double x) {
  if (!(x > 0)) return 0;
  if (x >= 18446744073709551615.0) return UINT64_MAX;
  return (uint64_t)x;
}
static int64_t d2i64(double x) {
  if (!(x == x)) return 0;
  if (x >= 9223372036854775807.0) return INT64_MAX;
  if (x <= -9223372036854775808.0) return INT64_MIN;
  return (int64_t)x;
}
static long d2nsec(double x) {
  if (!(x > 0)) return 0;
  if (x > 999999999.0) return 999999999;
  return (long)x;
}
static double d2timeout(double x) { return x > 0 && isfinite(x) ? x : 0; }

static void scratch_stat(const double *d, struct stat *st) {
  memset(st, 0, sizeof *st);
  st->st_ino = d2u64(d[S_INO]);
  st->st_mode = (mode_t)d2u64(d[S_MODE]);
  st->st_nlink = (nlink_t)d2u64(d[S_NLINK]);
  st->st_uid = (uid_t)d2u64(d[S_UID]);
  st->st_gid = (gid_t)d2u64(d[S_GID]);
  st->st_rdev = (dev_t)d2u64(d[S_RDEV]);
  st->st_size = (off_t)d2u64(d[S_SIZE]);
  st->st_blocks = (blkcnt_t)d2u64(d[S_BLOCKS]);
  st->st_atim.tv_sec = d2i64(d[S_ATIME]);
  st->st_atim.tv_nsec = d2nsec(d[S_ATIME_NS]);
  st->st_mtim.tv_sec = d2i64(d[S_MTIME]);
  st->st_mtim.tv_nsec = d2nsec(d[S_MTIME_NS]);
  st->st_ctim.tv_sec = d2i64(d[S_CTIME]);
  st->st_ctim.tv_nsec = d2nsec(d[S_CTIME_NS]);
}

static void scratch_open(const double *d, struct fuse_file_info *fi) {
  memset(fi, 0, sizeof *fi);
  uint64_t flags = d2u64(d[S_OPEN_FLAGS]);
  fi->fh = d2u64(d[S_FH]) << 1 | ((flags & OPEN_NO_FLUSH) ? FH_NO_FLUSH : 0);
  fi->keep_cache = (flags & OPEN_KEEP_CACHE) != 0;
  fi->direct_io = (flags & OPEN_DIRECT_IO) != 0;
  fi->cache_readdir = (flags & OPEN_CACHE_DIR) != 0;
}

/* Common prologue: (handle, id, ...) -> session and the claimed request. Returns false
   to JS when the id is unknown (already answered, or the session has ended). */
#define REPLY_PROLOGUE(N)                                                              \
  size_t argc = (N);                                                                   \
  napi_value argv[(N)];                                                                \
  double id;                                                                           \
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return NULL;    \
  pf_session *s = get_session(env, argv[0]);                                           \
  if (!s) return throw_type(env, "invalid FUSE session handle");                       \
  if (napi_get_value_double(env, argv[1], &id) != napi_ok)                             \
    return throw_type(env, "request id must be a number");                             \
  pf_req *r = slot_take(s, id);                                                        \
  if (!r) return js_bool(env, 0);

/* A reply that doesn't fit the request still answers it (EIO), then throws so the
   JS side logs the bug. */
static napi_value reply_invalid(napi_env env, pf_req *r, const char *msg);

static void scratch_stat(const double *d, struct stat *st);

/* replyUnlinked(handle, id): an unlink's success, with the attributes (in scratch) of the
   inode it left unreachable (no name, no handle open), whose time write-back ll_setattr
   then answers. */
static napi_value js_reply_unlinked(napi_env env, napi_callback_info info) {
  REPLY_PROLOGUE(2)
  if (!s->scratch) return reply_invalid(env, r, "session has ended");
  if (r->op != OP_UNLINK) return reply_invalid(env, r, "replyUnlinked answers an unlink only");
  pf_gone *g = &s->gone[s->gone_next];
  scratch_stat(s->scratch, &g->st);
  g->ino = g->st.st_ino;
  g->attr_timeout = d2timeout(s->scratch[S_ATTR_TIMEOUT]);
  s->gone_next = (s->gone_next + 1) % GONE_SLOTS;
  fuse_reply_err(r->req, 0);
  req_free(r);
  return js_bool(env, 1);
}

static napi_value reply_invalid(napi_env env, pf_req *r, const char *msg) {
  fuse_reply_err(r->req, EIO);
  req_free(r);
  return throw_type(env, msg);
}

static napi_value js_reply_err(napi_env env, napi_callback_info info) {
  REPLY_PROLOGUE(3)
  int32_t e;
  if (napi_get_value_int32(env, argv[2], &e) != napi_ok || e < 0 || e > 4095) e = EIO;
  if (e == 0) {
    switch (r->op) {
    case OP_UNLINK: case OP_RMDIR: case OP_RENAME: case OP_FLUSH: case OP_RELEASE:
    case OP_FSYNC: case OP_RELEASEDIR: case OP_FSYNCDIR: case OP_SETXATTR:
    case OP_REMOVEXATTR: case OP_ACCESS: case OP_FALLOCATE:
      break;
    default:
      return reply_invalid(env, r, "this operation needs a reply value, not success without data");
    }
  }
  if (e == ENOENT && r->op == OP_LOOKUP && s->neg_timeout > 0) {
    /* ino 0 + entry_timeout: the kernel caches the negative dentry. */
    struct fuse_entry_param ep;
    memset(&ep, 0, sizeof ep);
    ep.entry_timeout = s->neg_timeout;
    fuse_reply_entry(r->req, &ep);
  } else {
    fuse_reply_err(r->req, e);
  }
  req_free(r);
  return js_bool(env, 1);
}

static napi_value js_reply_entry(napi_env env, napi_callback_info info) {
  REPLY_PROLOGUE(2)
  if (!s->scratch) return reply_invalid(env, r, "session has ended");
  switch (r->op) {
  case OP_LOOKUP: case OP_MKNOD: case OP_MKDIR: case OP_SYMLINK: case OP_LINK: case OP_CREATE:
    break;
  default:
    return reply_invalid(env, r, "replyEntry used for an operation that does not return an entry");
  }
  struct fuse_entry_param ep;
  memset(&ep, 0, sizeof ep);
  scratch_stat(s->scratch, &ep.attr);
  ep.ino = ep.attr.st_ino;
  ep.entry_timeout = d2timeout(s->scratch[S_ENTRY_TIMEOUT]);
  ep.attr_timeout = d2timeout(s->scratch[S_ATTR_TIMEOUT]);
  if (r->op == OP_CREATE) {
    struct fuse_file_info fi;
    scratch_open(s->scratch, &fi);
    fuse_reply_create(r->req, &ep, &fi);
  } else {
    fuse_reply_entry(r->req, &ep);
  }
  req_free(r);
  return js_bool(env, 1);
}

static napi_value js_reply_attr(napi_env env, napi_callback_info info) {
  REPLY_PROLOGUE(2)
  if (!s->scratch) return reply_invalid(env, r, "session has ended");
  if (r->op != OP_GETATTR && r->op != OP_SETATTR)
    return reply_invalid(env, r, "replyAttr used for an operation that does not return attributes");
  struct stat st;
  scratch_stat(s->scratch, &st);
  fuse_reply_attr(r->req, &st, d2timeout(s->scratch[S_ATTR_TIMEOUT]));
  req_free(r);
  return js_bool(env, 1);
}

static napi_value js_reply_open(napi_env env, napi_callback_info info) {
  REPLY_PROLOGUE(2)
  if (!s->scratch) return reply_invalid(env, r, "session has ended");
  if (r->op != OP_OPEN && r->op != OP_OPENDIR)
    return reply_invalid(env, r, "replyOpen used for an operation other than open/opendir");
  struct fuse_file_info fi;
  scratch_open(s->scratch, &fi);
  fuse_reply_open(r->req, &fi);
  req_free(r);
  return js_bool(env, 1);
}

/* A byte count: what a write stored, or what a copy_file_range copied (at most its length). */
static napi_value js_reply_write(napi_env env, napi_callback_info info) {
  REPLY_PROLOGUE(3)
  double n;
  if (r->op != OP_WRITE && r->op != OP_COPY_FILE_RANGE)
    return reply_invalid(env, r, "replyWrite used for an operation other than write or copy_file_range");
  double limit = r->op == OP_WRITE ? (double)r->datalen : (double)r->size;
  if (napi_get_value_double(env, argv[2], &n) != napi_ok || !(n >= 0) || n > limit || n != floor(n))
    return reply_invalid(env, r, "write must return a byte count between 0 and the request size");
  fuse_reply_write(r->req, (size_t)n);
  req_free(r);
  return js_bool(env, 1);
}

/* The offset an lseek (SEEK_DATA / SEEK_HOLE) found. */
static napi_value js_reply_lseek(napi_env env, napi_callback_info info) {
  REPLY_PROLOGUE(3)
  double off;
  if (r->op != OP_LSEEK) return reply_invalid(env, r, "replyLseek used for an operation other than lseek");
  if (napi_get_value_double(env, argv[2], &off) != napi_ok || !(off >= 0) || off >= 9007199254740992.0 ||
      off != floor(off))
    return reply_invalid(env, r, "lseek must return a non-negative integer offset");
  fuse_reply_lseek(r->req, (off_t)off);
  req_free(r);
  return js_bool(env, 1);
}

static napi_value js_reply_buf(napi_env env, napi_callback_info info) {
  REPLY_PROLOGUE(3)
  void *data;
  size_t len;
  if (napi_get_buffer_info(env, argv[2], &data, &len) != napi_ok)
    return reply_invalid(env, r, "expected a Buffer reply");
  switch (r->op) {
  case OP_READ:
    /* fuse_reply_buf writes straight from this memory: no copy of our own needed. */
    fuse_reply_buf(r->req, data, len < r->size ? len : r->size);
    break;
  case OP_READLINK: {
    if (memchr(data, 0, len)) return reply_invalid(env, r, "symlink target contains a NUL byte");
    char *z = malloc(len + 1);
    if (!z) {
      fuse_reply_err(r->req, ENOMEM);
      break;
    }
    memcpy(z, data, len);
    z[len] = 0;
    fuse_reply_readlink(r->req, z);
    free(z);
    break;
  }
  case OP_GETXATTR: case OP_LISTXATTR:
    if (r->size == 0) fuse_reply_xattr(r->req, len); /* size probe */
    else if (len > r->size) fuse_reply_err(r->req, ERANGE);
    else fuse_reply_buf(r->req, data, len);
    break;
  default:
    return reply_invalid(env, r, "replyBuf used for an operation that does not return bytes");
  }
  req_free(r);
  return js_bool(env, 1);
}

static napi_value js_reply_statfs(napi_env env, napi_callback_info info) {
  REPLY_PROLOGUE(2)
  if (!s->scratch) return reply_invalid(env, r, "session has ended");
  if (r->op != OP_STATFS) return reply_invalid(env, r, "replyStatfs used for an operation other than statfs");
  const double *d = s->scratch;
  struct statvfs st;
  memset(&st, 0, sizeof st);
  st.f_bsize = d2u64(d[0]);
  st.f_frsize = d2u64(d[1]);
  st.f_blocks = d2u64(d[2]);
  st.f_bfree = d2u64(d[3]);
  st.f_bavail = d2u64(d[4]);
  st.f_files = d2u64(d[5]);
  st.f_ffree = d2u64(d[6]);
  st.f_favail = d2u64(d[7]);
  st.f_namemax = d2u64(d[8]);
  fuse_reply_statfs(r->req, &st);
  req_free(r);
  return js_bool(env, 1);
}

static int is_dot_or_dotdot(const char *name) {
  return name[0] == '.' && (name[1] == 0 || (name[1] == '.' && name[2] == 0));
}

/* replyDir(handle, id, entries: DirEntry[], attrs?: Float64Array) -> entries packed, or
   false when the request was already answered. Packs whole entries until r->size is
   full. A readdirplus reply also gives each entry's attributes in `attrs`
   (DIRPLUS_STRIDE slots per entry, in scratch order): an entry whose S_INO slot is 0
   goes without them (. and .., or a name that could not be looked up), and every other
   one adds one to the kernel's lookup count of its inode. JS forgets, for the filesystem,
   the counted entries that did not fit. */
static napi_value js_reply_dir(napi_env env, napi_callback_info info) {
  REPLY_PROLOGUE(4)
  const int plus = r->op == OP_READDIRPLUS;
  if (r->op != OP_READDIR && !plus)
    return reply_invalid(env, r, "replyDir used for an operation other than readdir/readdirplus");
  bool is_array = false;
  uint32_t count = 0;
  if (napi_is_array(env, argv[2], &is_array) != napi_ok || !is_array ||
      napi_get_array_length(env, argv[2], &count) != napi_ok)
    return reply_invalid(env, r, "readdir must return an array of DirEntry");
  const double *attrs = NULL;
  if (plus) {
    bool is_ta = false;
    napi_typedarray_type tt;
    size_t tlen = 0;
    void *tdata = NULL;
    if (argc < 4 || napi_is_typedarray(env, argv[3], &is_ta) != napi_ok || !is_ta ||
        napi_get_typedarray_info(env, argv[3], &tt, &tlen, &tdata, NULL, NULL) != napi_ok ||
        tt != napi_float64_array || tlen < (size_t)count * DIRPLUS_STRIDE)
      return reply_invalid(env, r, "readdirplus needs a Float64Array of attributes for every entry");
    attrs = tdata;
  }
  napi_value k_name, k_ino, k_mode, k_next;
  if (napi_create_string_latin1(env, "name", NAPI_AUTO_LENGTH, &k_name) != napi_ok ||
      napi_create_string_latin1(env, "ino", NAPI_AUTO_LENGTH, &k_ino) != napi_ok ||
      napi_create_string_latin1(env, "mode", NAPI_AUTO_LENGTH, &k_mode) != napi_ok ||
      napi_create_string_latin1(env, "nextOffset", NAPI_AUTO_LENGTH, &k_next) != napi_ok)
    return reply_invalid(env, r, "out of memory");
  char *buf = malloc(r->size ? r->size : 1);
  if (!buf) {
    fuse_reply_err(r->req, ENOMEM);
    req_free(r);
    napi_value zero;
    napi_create_uint32(env, 0, &zero);
    return zero;
  }
  size_t pos = 0;
  uint32_t packed = 0;
  const char *bad = NULL;
  char name[1024];
  for (uint32_t i = 0; i < count; i++) {
    napi_value e, v;
    void *nd;
    size_t nlen;
    double ino, mode, next;
    if (napi_get_element(env, argv[2], i, &e) != napi_ok ||
        napi_get_property(env, e, k_name, &v) != napi_ok ||
        napi_get_buffer_info(env, v, &nd, &nlen) != napi_ok ||
        napi_get_property(env, e, k_ino, &v) != napi_ok || napi_get_value_double(env, v, &ino) != napi_ok ||
        napi_get_property(env, e, k_mode, &v) != napi_ok || napi_get_value_double(env, v, &mode) != napi_ok ||
        napi_get_property(env, e, k_next, &v) != napi_ok || napi_get_value_double(env, v, &next) != napi_ok) {
      bad = "invalid DirEntry (needs name: Buffer, ino, mode, nextOffset numbers)";
      break;
    }
    if (nlen == 0 || nlen >= sizeof name || memchr(nd, 0, nlen) || memchr(nd, '/', nlen)) {
      bad = "invalid DirEntry name (empty, too long, or contains NUL or '/')";
      break;
    }
    memcpy(name, nd, nlen);
    name[nlen] = 0; /* fuse_add_direntry wants a C string */
    size_t need;
    if (plus) {
      struct fuse_entry_param ep;
      memset(&ep, 0, sizeof ep);
      const double *d = attrs + (size_t)i * DIRPLUS_STRIDE;
      if (d[S_INO] > 0 && !is_dot_or_dotdot(name)) {
        scratch_stat(d, &ep.attr);
        ep.ino = ep.attr.st_ino;
        ep.entry_timeout = d2timeout(d[S_ENTRY_TIMEOUT]);
        ep.attr_timeout = d2timeout(d[S_ATTR_TIMEOUT]);
      } else {
        /* ep.ino 0: a plain entry, no attributes and no lookup count. */
        ep.attr.st_ino = d2u64(ino);
        ep.attr.st_mode = (mode_t)d2u64(mode) & S_IFMT;
      }
      need = fuse_add_direntry_plus(r->req, NULL, 0, name, NULL, 0);
      if (need > r->size - pos) break; /* never split an entry: the kernel asks again */
      fuse_add_direntry_plus(r->req, buf + pos, r->size - pos, name, &ep, (off_t)d2i64(next));
    } else {
      struct stat st;
      memset(&st, 0, sizeof st);
      st.st_ino = d2u64(ino);
      st.st_mode = (mode_t)d2u64(mode) & S_IFMT;
      need = fuse_add_direntry(r->req, NULL, 0, name, NULL, 0);
      if (need > r->size - pos) break; /* never split an entry: the kernel asks again */
      fuse_add_direntry(r->req, buf + pos, r->size - pos, name, &st, (off_t)d2i64(next));
    }
    pos += need;
    packed++;
  }
  bool pending = false;
  if (bad && napi_is_exception_pending(env, &pending) == napi_ok && pending) {
    napi_value ignored;
    napi_get_and_clear_last_exception(env, &ignored); /* a throwing getter: report ours */
  }
  if (bad) {
    free(buf);
    return reply_invalid(env, r, bad);
  }
  fuse_reply_buf(r->req, buf, pos);
  free(buf);
  req_free(r);
  napi_value out;
  if (napi_create_uint32(env, packed, &out) != napi_ok) return NULL;
  return out;
}

static napi_value js_set_security_xattrs(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  bool present;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return NULL;
  pf_session *s = get_session(env, argv[0]);
  if (!s) return throw_type(env, "invalid FUSE session handle");
  if (napi_get_value_bool(env, argv[1], &present) != napi_ok) return throw_type(env, "expected a boolean");
  atomic_store(&s->security_xattrs, present ? 1 : 0);
  return NULL;
}

/* detach(handle): synchronous lazy unmount for process exit. Never blocks on the FS. */
static napi_value js_detach(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return NULL;
  pf_session *s = get_session(env, argv[0]);
  if (!s) return throw_type(env, "invalid FUSE session handle");
  if (!s->ended) detach_mount(s);
  return NULL;
}

static char *get_string(napi_env env, napi_value v) {
  size_t len;
  if (napi_get_value_string_utf8(env, v, NULL, 0, &len) != napi_ok) return NULL;
  char *p = malloc(len + 1);
  if (p && napi_get_value_string_utf8(env, v, p, len + 1, &len) != napi_ok) {
    free(p);
    return NULL;
  }
  return p;
}

static napi_value throw_mount_error(napi_env env, const char *what, char *detail) {
  char msg[2048];
  snprintf(msg, sizeof msg, "%s%s%s", what, detail && *detail ? ": " : "", detail ? detail : "");
  free(detail);
  napi_throw_error(env, NULL, msg);
  return NULL;
}

/* mount(mountpoint, argv[], maxWrite, writeback, negativeTimeout, handlers[])
     -> [handle, scratch: Float64Array] */
static napi_value js_mount(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return NULL;

  char *mp = get_string(env, argv[0]);
  if (!mp) return throw_type(env, "mountpoint must be a string");
  bool is_array = false, writeback = false;
  uint32_t nargs = 0, nhandlers = 0;
  double max_write = 0, neg_timeout = 0;
  if (napi_is_array(env, argv[1], &is_array) != napi_ok || !is_array ||
      napi_get_array_length(env, argv[1], &nargs) != napi_ok || nargs == 0 ||
      napi_get_value_double(env, argv[2], &max_write) != napi_ok ||
      napi_get_value_bool(env, argv[3], &writeback) != napi_ok ||
      napi_get_value_double(env, argv[4], &neg_timeout) != napi_ok ||
      napi_is_array(env, argv[5], &is_array) != napi_ok || !is_array ||
      napi_get_array_length(env, argv[5], &nhandlers) != napi_ok || nhandlers < OP_COUNT) {
    free(mp);
    return throw_type(env, "mount(mountpoint, argv, maxWrite, writeback, negativeTimeout, handlers)");
  }

  struct fuse_args fargs = FUSE_ARGS_INIT(0, NULL);
  for (uint32_t i = 0; i < nargs; i++) {
    napi_value v;
    char *a = NULL;
    if (napi_get_element(env, argv[1], i, &v) == napi_ok) a = get_string(env, v);
    if (!a || fuse_opt_add_arg(&fargs, a) != 0) {
      free(a);
      fuse_opt_free_args(&fargs);
      free(mp);
      return throw_type(env, "argv must be an array of strings");
    }
    free(a);
  }

  pf_session *s = calloc(1, sizeof *s);
  if (!s) {
    fuse_opt_free_args(&fargs);
    free(mp);
    return throw_mount_error(env, "out of memory", NULL);
  }
  s->magic = SESSION_MAGIC;
  s->env = env;
  s->mountpoint = mp;
  s->free_head = NO_SLOT;
  s->max_write = max_write >= 4096 && max_write <= (double)UINT32_MAX ? (uint32_t)max_write : ONE_MIB;
  s->writeback = writeback;
  /* The kernel is asked for readdirplus only when JS serves it. */
  napi_value rdp;
  napi_valuetype rdp_type = napi_undefined;
  if (napi_get_element(env, argv[5], OP_READDIRPLUS, &rdp) == napi_ok) napi_typeof(env, rdp, &rdp_type);
  s->readdirplus = rdp_type == napi_function;
  s->neg_timeout = d2timeout(neg_timeout);
  s->spin = sysconf(_SC_NPROCESSORS_ONLN) > 1;
  atomic_init(&s->security_xattrs, 0);
  atomic_init(&s->notifying, 0);

  capture_begin();
  s->se = fuse_session_new(&fargs, &ll_ops, sizeof ll_ops, s);
  fuse_opt_free_args(&fargs);
  if (!s->se) {
    free_session(s);
    return throw_mount_error(env, "fuse_session_new failed", capture_end());
  }
  /* No fuse_set_signal_handlers / fuse_daemonize: Node owns signals and the process. */
  if (fuse_session_mount(s->se, mp) != 0) {
    fuse_session_destroy(s->se);
    free_session(s);
    return throw_mount_error(env, "fuse_session_mount failed", capture_end());
  }
  free(capture_end());

  napi_value handle, scratch_ab, scratch, name, result;
  void *scratch_data;
  napi_status st = napi_create_arraybuffer(env, S_COUNT * sizeof(double), &scratch_data, &scratch_ab);
  if (st == napi_ok) st = napi_create_typedarray(env, napi_float64_array, S_COUNT, scratch_ab, 0, &scratch);
  if (st == napi_ok) st = napi_create_reference(env, scratch_ab, 1, &s->scratch_ref);
  if (st == napi_ok) st = napi_create_reference(env, argv[5], 1, &s->handlers_ref);
  if (st == napi_ok) st = napi_create_string_utf8(env, "pogfs_fuse", NAPI_AUTO_LENGTH, &name);
  if (st == napi_ok) st = napi_async_init(env, NULL, name, &s->actx);
  uv_loop_t *loop = NULL;
  if (st == napi_ok) st = napi_get_uv_event_loop(env, &loop);
  int fd = fuse_session_fd(s->se);
  int uverr = -1, poll_inited = 0;
  if (st == napi_ok && fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) == 0 &&
      (uverr = uv_poll_init(loop, &s->poll, fd)) == 0) {
    poll_inited = 1;
    s->poll.data = s;
    uverr = uv_poll_start(&s->poll, UV_READABLE, on_readable);
    if (uverr != 0) uv_close((uv_handle_t *)&s->poll, NULL);
  }
  if (st != napi_ok || uverr != 0) {
    fuse_session_unmount(s->se);
    fuse_session_destroy(s->se);
    if (s->actx) napi_async_destroy(env, s->actx);
    if (s->scratch_ref) napi_delete_reference(env, s->scratch_ref);
    if (s->handlers_ref) napi_delete_reference(env, s->handlers_ref);
    /* libuv keeps using an initialised handle until its close completes: leak s
       (a rare failure path) rather than free memory libuv still holds. */
    if (!poll_inited) free_session(s);
    return throw_mount_error(env, "failed to set up the JS side of the session", NULL);
  }
  s->scratch = scratch_data; /* ArrayBuffer backing stores never move */
  napi_add_env_cleanup_hook(env, cleanup_hook, s);

  if (napi_create_external(env, s, session_finalize, NULL, &handle) != napi_ok ||
      napi_create_array_with_length(env, 2, &result) != napi_ok ||
      napi_set_element(env, result, 0, handle) != napi_ok ||
      napi_set_element(env, result, 1, scratch) != napi_ok) {
    /* Mounted and running but unreachable from JS: detach so the loop ends and cleans up. */
    umount2(mp, MNT_DETACH);
    return throw_mount_error(env, "failed to create the session handle", NULL);
  }
  return result;
}

/* umount(mountpoint, lazy) -> Promise<errno> (0 on success). umount2 runs on a worker
   thread: unmounting flushes dirty pages through this very filesystem, whose requests
   are served on the JS thread, so doing it there would deadlock. */
typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  char *path;
  int flags;
  int err;
} umount_job;

static void umount_execute(napi_env env, void *data) {
  (void)env;
  umount_job *j = data;
  j->err = umount2(j->path, j->flags) == 0 ? 0 : errno;
}

static void umount_complete(napi_env env, napi_status status, void *data) {
  umount_job *j = data;
  napi_value v;
  napi_create_int32(env, status == napi_ok ? j->err : ECANCELED, &v);
  napi_resolve_deferred(env, j->deferred, v);
  napi_delete_async_work(env, j->work);
  free(j->path);
  free(j);
}

static napi_value js_umount(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2], promise, name;
  bool lazy = false;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return NULL;
  umount_job *j = calloc(1, sizeof *j);
  if (!j) return throw_mount_error(env, "out of memory", NULL);
  j->path = get_string(env, argv[0]);
  napi_get_value_bool(env, argv[1], &lazy);
  j->flags = lazy ? MNT_DETACH : 0;
  if (!j->path || napi_create_promise(env, &j->deferred, &promise) != napi_ok ||
      napi_create_string_utf8(env, "pogfs_umount", NAPI_AUTO_LENGTH, &name) != napi_ok ||
      napi_create_async_work(env, NULL, name, umount_execute, umount_complete, j, &j->work) != napi_ok ||
      napi_queue_async_work(env, j->work) != napi_ok) {
    free(j->path);
    free(j);
    return throw_type(env, "umount(mountpoint: string, lazy: boolean)");
  }
  return promise;
}

/* notifyInvalEntry(handle, parent, name: Buffer) / notifyInvalInode(handle, ino, off, len)
     -> Promise<errno> (0 on success; ENOENT when the kernel had nothing cached).
   Run on a worker thread: the kernel takes the directory's lock to drop an entry, and a
   lookup in that directory may be waiting for this very (JS) thread to answer it. */
typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  pf_session *s;
  int inode; /* 0: entry, 1: inode */
  uint64_t ino;
  char *name;
  size_t namelen;
  int64_t off, len;
  int err;
} notify_job;

static void notify_execute(napi_env env, void *data) {
  (void)env;
  notify_job *j = data;
  int rc = j->inode ? fuse_lowlevel_notify_inval_inode(j->s->se, (fuse_ino_t)j->ino, j->off, j->len)
                    : fuse_lowlevel_notify_inval_entry(j->s->se, (fuse_ino_t)j->ino, j->name, j->namelen);
  j->err = rc < 0 ? -rc : rc;
  atomic_fetch_sub(&j->s->notifying, 1);
}

static void notify_complete(napi_env env, napi_status status, void *data) {
  notify_job *j = data;
  napi_value v;
  if (status == napi_cancelled) atomic_fetch_sub(&j->s->notifying, 1); /* execute never ran */
  napi_create_int32(env, status == napi_ok ? j->err : ECANCELED, &v);
  napi_resolve_deferred(env, j->deferred, v);
  napi_delete_async_work(env, j->work);
  free(j->name);
  free(j);
}

static napi_value start_notify(napi_env env, notify_job *j) {
  napi_value promise, name, v;
  if (napi_create_promise(env, &j->deferred, &promise) != napi_ok) {
    free(j->name);
    free(j);
    return throw_type(env, "cannot create a promise");
  }
  pf_session *s = j->s;
  if (s->ended || s->loop_done || !s->se) {
    napi_create_int32(env, ENOTCONN, &v);
    napi_resolve_deferred(env, j->deferred, v);
    free(j->name);
    free(j);
    return promise;
  }
  atomic_fetch_add(&s->notifying, 1);
  if (napi_create_string_utf8(env, "pogfs_notify", NAPI_AUTO_LENGTH, &name) != napi_ok ||
      napi_create_async_work(env, NULL, name, notify_execute, notify_complete, j, &j->work) != napi_ok ||
      napi_queue_async_work(env, j->work) != napi_ok) {
    atomic_fetch_sub(&s->notifying, 1);
    napi_create_int32(env, ENOMEM, &v);
    napi_resolve_deferred(env, j->deferred, v);
    free(j->name);
    free(j);
  }
  return promise;
}

static napi_value js_notify_inval_entry(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  double parent;
  void *data;
  size_t len;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return NULL;
  pf_session *s = get_session(env, argv[0]);
  if (!s) return throw_type(env, "invalid FUSE session handle");
  if (napi_get_value_double(env, argv[1], &parent) != napi_ok || napi_get_buffer_info(env, argv[2], &data, &len) != napi_ok ||
      len == 0 || len > 1024)
    return throw_type(env, "notifyInvalEntry(handle, parent: number, name: Buffer)");
  notify_job *j = calloc(1, sizeof *j);
  if (!j || !(j->name = malloc(len + 1))) {
    free(j);
    return throw_type(env, "out of memory");
  }
  memcpy(j->name, data, len);
  j->name[len] = 0;
  j->namelen = len;
  j->s = s;
  j->inode = 0;
  j->ino = d2u64(parent);
  return start_notify(env, j);
}

static napi_value js_notify_inval_inode(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  double ino, off, len;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return NULL;
  pf_session *s = get_session(env, argv[0]);
  if (!s) return throw_type(env, "invalid FUSE session handle");
  if (napi_get_value_double(env, argv[1], &ino) != napi_ok || napi_get_value_double(env, argv[2], &off) != napi_ok ||
      napi_get_value_double(env, argv[3], &len) != napi_ok)
    return throw_type(env, "notifyInvalInode(handle, ino, off, len)");
  notify_job *j = calloc(1, sizeof *j);
  if (!j) return throw_type(env, "out of memory");
  j->s = s;
  j->inode = 1;
  j->ino = d2u64(ino);
  j->off = (int64_t)off;
  j->len = (int64_t)len;
  return start_notify(env, j);
}

/* { libfuse: the library loaded at run time, api: the FUSE_USE_VERSION built against }, for `pogfs version`. */
static napi_value js_versions(napi_env env, napi_callback_info info) {
  napi_value out, lib, api;
  char buf[16];
  snprintf(buf, sizeof buf, "%d.%d", FUSE_USE_VERSION / 100, FUSE_USE_VERSION % 100);
  if (napi_create_object(env, &out) != napi_ok ||
      napi_create_string_utf8(env, fuse_pkgversion(), NAPI_AUTO_LENGTH, &lib) != napi_ok ||
      napi_create_string_utf8(env, buf, NAPI_AUTO_LENGTH, &api) != napi_ok ||
      napi_set_named_property(env, out, "libfuse", lib) != napi_ok ||
      napi_set_named_property(env, out, "api", api) != napi_ok)
    return NULL;
  return out;
}

static napi_value module_init(napi_env env, napi_value exports) {
  /* Process-wide; routes libfuse messages to stderr, or into a mount error message. */
  fuse_set_log_func(pf_log);
  napi_property_descriptor props[] = {
    { "mount", NULL, js_mount, NULL, NULL, NULL, napi_enumerable, NULL },
    { "umount", NULL, js_umount, NULL, NULL, NULL, napi_enumerable, NULL },
    { "versions", NULL, js_versions, NULL, NULL, NULL, napi_enumerable, NULL },
    { "sdNotify", NULL, pf_js_sd_notify, NULL, NULL, NULL, napi_enumerable, NULL },
    { "detach", NULL, js_detach, NULL, NULL, NULL, napi_enumerable, NULL },
    { "setSecurityXattrsPresent", NULL, js_set_security_xattrs, NULL, NULL, NULL, napi_enumerable, NULL },
    { "replyErr", NULL, js_reply_err, NULL, NULL, NULL, napi_enumerable, NULL },
    { "replyUnlinked", NULL, js_reply_unlinked, NULL, NULL, NULL, napi_enumerable, NULL },
    { "replyEntry", NULL, js_reply_entry, NULL, NULL, NULL, napi_enumerable, NULL },
    { "replyAttr", NULL, js_reply_attr, NULL, NULL, NULL, napi_enumerable, NULL },
    { "replyOpen", NULL, js_reply_open, NULL, NULL, NULL, napi_enumerable, NULL },
    { "replyWrite", NULL, js_reply_write, NULL, NULL, NULL, napi_enumerable, NULL },
    { "replyLseek", NULL, js_reply_lseek, NULL, NULL, NULL, napi_enumerable, NULL },
    { "replyBuf", NULL, js_reply_buf, NULL, NULL, NULL, napi_enumerable, NULL },
    { "replyStatfs", NULL, js_reply_statfs, NULL, NULL, NULL, napi_enumerable, NULL },
    { "replyDir", NULL, js_reply_dir, NULL, NULL, NULL, napi_enumerable, NULL },
    { "notifyInvalEntry", NULL, js_notify_inval_entry, NULL, NULL, NULL, napi_enumerable, NULL },
    { "notifyInvalInode", NULL, js_notify_inval_inode, NULL, NULL, NULL, napi_enumerable, NULL },
  };
  if (napi_define_properties(env, exports, sizeof props / sizeof props[0], props) != napi_ok) return NULL;
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, module_init)
