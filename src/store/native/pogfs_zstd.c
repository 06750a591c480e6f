/*
 * pogfs_zstd.c: zstd block compression for the block store's codec layer (codec.ts),
 * over the system's libzstd (Debian's libzstd-dev).
 *
 * Why our own twenty functions rather than an npm binding (measured in issue 18's note):
 * the bindings that install here either run on the JavaScript thread only (zstd-napi),
 * ignore the level (@mongodb-js/zstd 1.2), cannot install without GitHub (its 7.x), or
 * decode through a growing stream buffer whose memory V8 does not see, so the daemon's
 * RSS climbed by gigabytes under a read loop (@toondepauw/node-zstd). A block's decoded
 * length is in its header, so decoding here writes straight into a buffer of exactly
 * that size, and a frame that decodes to any other length is an error: the corrupt-block
 * rule of codec.ts in one comparison.
 *
 * Threading: the *Async functions run on libuv's thread pool (napi async work), as
 * lz4-napi's do; the *Sync ones on the caller's thread (probes, maintenance). Each thread
 * keeps one compression and one decompression context (thread-local), so a call
 * allocates nothing but its output.
 *
 * API (all buffers are Node Buffers / Uint8Arrays):
 *   compressSync(input, level) -> Buffer          a zstd frame with the content size
 *   compressAsync(input, level) -> Promise<Buffer>
 *   decompressSync(frame, rawLength) -> Buffer    throws unless exactly rawLength bytes
 *   decompressAsync(frame, rawLength) -> Promise<Buffer>
 *   version() -> string                           libzstd's version, for stats and logs
 *   maxLevel() -> number
 */
#define NAPI_VERSION 8
#include <node_api.h>
#include <zstd.h>
#include <zstd_errors.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static _Thread_local ZSTD_CCtx *tl_cctx;
static _Thread_local ZSTD_DCtx *tl_dctx;

#define CHECK(call)                                                      \
  do {                                                                   \
    if ((call) != napi_ok) {                                             \
      napi_throw_error(env, NULL, "pogfs_zstd: N-API call failed: " #call); \
      return NULL;                                                       \
    }                                                                    \
  } while (0)

/* Compresses into `out` (capacity ZSTD_compressBound). Returns the frame size or a zstd error code. */
static size_t do_compress(void *out, size_t cap, const void *in, size_t len, int level) {
  if (!tl_cctx) tl_cctx = ZSTD_createCCtx();
  if (!tl_cctx) return (size_t)-ZSTD_error_memory_allocation;
  ZSTD_CCtx_reset(tl_cctx, ZSTD_reset_session_and_parameters);
  ZSTD_CCtx_setParameter(tl_cctx, ZSTD_c_compressionLevel, level);
  /* The content size goes in the frame header (ZSTD_compress2 does so for one-shot input),
   * no checksum: every block is checked against its BLAKE3 key when read. */
  ZSTD_CCtx_setParameter(tl_cctx, ZSTD_c_checksumFlag, 0);
  return ZSTD_compress2(tl_cctx, out, cap, in, len);
}

/* Decompresses into `out` of exactly `raw` bytes. Returns the decoded size or a zstd error code. */
static size_t do_decompress(void *out, size_t raw, const void *in, size_t len) {
  if (!tl_dctx) tl_dctx = ZSTD_createDCtx();
  if (!tl_dctx) return (size_t)-ZSTD_error_memory_allocation;
  return ZSTD_decompressDCtx(tl_dctx, out, raw, in, len);
}

static int get_bytes(napi_env env, napi_value v, void **data, size_t *len) {
  bool is;
  if (napi_is_buffer(env, v, &is) == napi_ok && is) return napi_get_buffer_info(env, v, data, len) == napi_ok;
  if (napi_is_typedarray(env, v, &is) == napi_ok && is) {
    napi_typedarray_type type;
    napi_value ab;
    size_t offset;
    if (napi_get_typedarray_info(env, v, &type, len, data, &ab, &offset) != napi_ok || type != napi_uint8_array) return 0;
    return 1;
  }
  return 0;
}

static int get_args(napi_env env, napi_callback_info info, void **data, size_t *len, int64_t *num) {
  size_t argc = 2;
  napi_value argv[2];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 2) {
    napi_throw_type_error(env, NULL, "pogfs_zstd: expected (bytes, number)");
    return 0;
  }
  if (!get_bytes(env, argv[0], data, len)) {
    napi_throw_type_error(env, NULL, "pogfs_zstd: first argument must be a Buffer or Uint8Array");
    return 0;
  }
  if (napi_get_value_int64(env, argv[1], num) != napi_ok) {
    napi_throw_type_error(env, NULL, "pogfs_zstd: second argument must be a number");
    return 0;
  }
  return 1;
}

static void throw_zstd(napi_env env, const char *what, size_t code) {
  char msg[160];
  snprintf(msg, sizeof msg, "zstd %s failed: %s", what, ZSTD_getErrorName(code));
  napi_throw_error(env, NULL, msg);
}

/*
 * The frame's own content size must be the decoded length the block header claims: a
 * corrupt header is caught before its length is allocated, a corrupt frame header
 * before anything is decoded. Returns 1 when they agree; otherwise throws and returns 0.
 */
static int check_content_size(napi_env env, const void *in, size_t len, int64_t raw) {
  if (raw < 0 || raw > 0x7fffffff) {
    napi_throw_range_error(env, NULL, "zstd decompress: bad decoded length");
    return 0;
  }
  unsigned long long size = ZSTD_getFrameContentSize(in, len);
  if (size == ZSTD_CONTENTSIZE_ERROR || size == ZSTD_CONTENTSIZE_UNKNOWN) {
    napi_throw_error(env, NULL, "zstd frame has no valid header with its content size");
    return 0;
  }
  if (size != (unsigned long long)raw) {
    char msg[120];
    snprintf(msg, sizeof msg, "zstd frame holds %llu bytes, expected %lld", size, (long long)raw);
    napi_throw_error(env, NULL, msg);
    return 0;
  }
  return 1;
}

static napi_value js_compress_sync(napi_env env, napi_callback_info info) {
  void *in;
  size_t len;
  int64_t level;
  if (!get_args(env, info, &in, &len, &level)) return NULL;
  size_t cap = ZSTD_compressBound(len);
  void *tmp = malloc(cap ? cap : 1);
  if (!tmp) {
    napi_throw_error(env, NULL, "zstd compress: out of memory");
    return NULL;
  }
  size_t n = do_compress(tmp, cap, in, len, (int)level);
  if (ZSTD_isError(n)) {
    free(tmp);
    throw_zstd(env, "compress", n);
    return NULL;
  }
  napi_value out;
  napi_status st = napi_create_buffer_copy(env, n, tmp, NULL, &out);
  free(tmp);
  CHECK(st);
  return out;
}

static napi_value js_decompress_sync(napi_env env, napi_callback_info info) {
  void *in;
  size_t len;
  int64_t raw;
  if (!get_args(env, info, &in, &len, &raw)) return NULL;
  if (!check_content_size(env, in, len, raw)) return NULL;
  void *data;
  napi_value out;
  CHECK(napi_create_buffer(env, (size_t)raw, &data, &out));
  size_t n = do_decompress(data, (size_t)raw, in, len);
  if (ZSTD_isError(n)) {
    throw_zstd(env, "decompress", n);
    return NULL;
  }
  if (n != (size_t)raw) {
    char msg[120];
    snprintf(msg, sizeof msg, "zstd frame decodes to %zu bytes, expected %lld", n, (long long)raw);
    napi_throw_error(env, NULL, msg);
    return NULL;
  }
  return out;
}

/* ---- async work: one job per call, on libuv's pool ---- */

typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  napi_ref input_ref; /* keeps the input alive while a pool thread reads it */
  napi_ref output_ref; /* decompression: the Buffer the pool thread writes into */
  const void *in;
  size_t len;
  int compress;
  int64_t arg; /* level, or the expected decoded length */
  void *out;
  size_t out_len;
  size_t result; /* zstd's return value */
} job_t;

static void job_execute(napi_env env, void *data) {
  (void)env;
  job_t *j = data;
  if (j->compress) {
    size_t cap = ZSTD_compressBound(j->len);
    j->out = malloc(cap ? cap : 1);
    if (!j->out) {
      j->result = (size_t)-ZSTD_error_memory_allocation;
      return;
    }
    j->result = do_compress(j->out, cap, j->in, j->len, (int)j->arg);
    j->out_len = ZSTD_isError(j->result) ? 0 : j->result;
  } else {
    j->result = do_decompress(j->out, (size_t)j->arg, j->in, j->len);
    j->out_len = ZSTD_isError(j->result) ? 0 : j->result;
  }
}

static void job_complete(napi_env env, napi_status status, void *data) {
  job_t *j = data;
  napi_value result = NULL;
  char msg[160] = "zstd: could not create the result buffer";
  if (status != napi_ok) {
    snprintf(msg, sizeof msg, "zstd %s was cancelled", j->compress ? "compress" : "decompress");
  } else if (ZSTD_isError(j->result)) {
    snprintf(msg, sizeof msg, "zstd %s failed: %s", j->compress ? "compress" : "decompress", ZSTD_getErrorName(j->result));
  } else if (!j->compress && j->out_len != (size_t)j->arg) {
    snprintf(msg, sizeof msg, "zstd frame decodes to %zu bytes, expected %lld", j->out_len, (long long)j->arg);
  } else if (j->compress) {
    /* The frame is much smaller than the bound it was written into: copy it out. */
    if (napi_create_buffer_copy(env, j->out_len, j->out, NULL, &result) != napi_ok) result = NULL;
  } else if (napi_get_reference_value(env, j->output_ref, &result) != napi_ok) {
    result = NULL;
  }
  if (j->compress) free(j->out);
  if (result) {
    napi_resolve_deferred(env, j->deferred, result);
  } else {
    napi_value text, error;
    napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &text);
    napi_create_error(env, NULL, text, &error);
    napi_reject_deferred(env, j->deferred, error);
  }
  napi_delete_reference(env, j->input_ref);
  if (j->output_ref) napi_delete_reference(env, j->output_ref);
  napi_delete_async_work(env, j->work);
  free(j);
}

static napi_value start_job(napi_env env, napi_callback_info info, int compress) {
  size_t argc = 2;
  napi_value argv[2];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  void *in;
  size_t len;
  int64_t arg;
  if (!get_args(env, info, &in, &len, &arg)) return NULL;
  if (!compress && !check_content_size(env, in, len, arg)) return NULL;
  job_t *j = calloc(1, sizeof *j);
  if (!j) {
    napi_throw_error(env, NULL, "zstd: out of memory");
    return NULL;
  }
  j->in = in;
  j->len = len;
  j->compress = compress;
  j->arg = arg;
  napi_value promise, name;
  CHECK(napi_create_promise(env, &j->deferred, &promise));
  CHECK(napi_create_reference(env, argv[0], 1, &j->input_ref));
  if (!compress) {
    /* Decoded into a Buffer of exactly the header's length, made here (V8 accounts for
     * it like any Buffer) and filled by the pool thread. */
    napi_value out;
    CHECK(napi_create_buffer(env, (size_t)arg, &j->out, &out));
    CHECK(napi_create_reference(env, out, 1, &j->output_ref));
  }
  CHECK(napi_create_string_utf8(env, compress ? "pogfs_zstd.compress" : "pogfs_zstd.decompress", NAPI_AUTO_LENGTH, &name));
  CHECK(napi_create_async_work(env, NULL, name, job_execute, job_complete, j, &j->work));
  CHECK(napi_queue_async_work(env, j->work));
  return promise;
}

static napi_value js_compress_async(napi_env env, napi_callback_info info) { return start_job(env, info, 1); }
static napi_value js_decompress_async(napi_env env, napi_callback_info info) { return start_job(env, info, 0); }

static napi_value js_version(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value v;
  CHECK(napi_create_string_utf8(env, ZSTD_versionString(), NAPI_AUTO_LENGTH, &v));
  return v;
}

static napi_value js_max_level(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value v;
  CHECK(napi_create_int32(env, ZSTD_maxCLevel(), &v));
  return v;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"compressSync", NULL, js_compress_sync, NULL, NULL, NULL, napi_default, NULL},
      {"compressAsync", NULL, js_compress_async, NULL, NULL, NULL, napi_default, NULL},
      {"decompressSync", NULL, js_decompress_sync, NULL, NULL, NULL, napi_default, NULL},
      {"decompressAsync", NULL, js_decompress_async, NULL, NULL, NULL, napi_default, NULL},
      {"version", NULL, js_version, NULL, NULL, NULL, napi_default, NULL},
      {"maxLevel", NULL, js_max_level, NULL, NULL, NULL, napi_default, NULL},
  };
  if (napi_define_properties(env, exports, sizeof props / sizeof props[0], props) != napi_ok) return NULL;
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
