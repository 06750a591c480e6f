// Does a trained zstd dictionary pay on pogfs's short blocks? (issue 18; the answer was
// no, see README "Compression", so pogfs has no dictionaries and this is only the
// measurement, kept to be rerun.) Not part of `npm run bench`: it needs nothing but libzstd.
//
//   gcc -O2 -o /tmp/zstd-dictionary bench/zstd-dictionary.c -lzstd
//   find /usr/include /usr/share/perl -type f | sort | /tmp/zstd-dictionary 3 [DICT_BYTES]
//
// Input on stdin: file paths (walk order). Units as pogfs makes them: full 128 KiB blocks
// are left out (a dictionary is for short inputs); short blocks (small files, tails)
// compressed alone, and packed into 1 MiB super-chunks in walk order. The dictionary
// (ZDICT_trainFromBuffer, 110 KiB by default as the zstd CLI's) is trained on the
// even-numbered short blocks; "untrained half" is measured on the odd ones only.
#define ZDICT_STATIC_LINKING_ONLY
#include <zstd.h>
#include <zdict.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define BLOCK (128 * 1024)
#define CHUNK (1024 * 1024)

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }

typedef struct { char *p; size_t n; } buf_t;

int main(int argc, char **argv) {
  int level = argc > 1 ? atoi(argv[1]) : 3;
  size_t dict_cap = argc > 2 ? (size_t)atol(argv[2]) : 112640;
  buf_t *shorts = NULL; size_t ns = 0, cs = 0;
  size_t logical = 0, full_blocks = 0;
  char path[4096];
  while (fgets(path, sizeof path, stdin)) {
    path[strcspn(path, "\n")] = 0;
    FILE *f = fopen(path, "rb"); if (!f) continue;
    fseek(f, 0, SEEK_END); long len = ftell(f); fseek(f, 0, SEEK_SET);
    char *d = malloc(len ? len : 1); if (fread(d, 1, len, f) != (size_t)len) { fclose(f); free(d); continue; }
    fclose(f);
    logical += len;
    for (long at = 0; at < len; at += BLOCK) {
      size_t n = len - at < BLOCK ? len - at : BLOCK;
      if (n == BLOCK) { full_blocks++; continue; }
      if (ns == cs) { cs = cs ? cs * 2 : 1024; shorts = realloc(shorts, cs * sizeof *shorts); }
      shorts[ns].p = d + at; shorts[ns].n = n; ns++;
    }
  }
  size_t short_bytes = 0; for (size_t i = 0; i < ns; i++) short_bytes += shorts[i].n;
  printf("logical %.1f MB, %zu full blocks, %zu short blocks (%.1f MB)\n", logical / 1e6, full_blocks, ns, short_bytes / 1e6);

  // Train on even-numbered short blocks.
  size_t tn = 0, tbytes = 0; for (size_t i = 0; i < ns; i += 2) { tn++; tbytes += shorts[i].n; }
  char *tbuf = malloc(tbytes); size_t *tsz = malloc(tn * sizeof *tsz); size_t at = 0, k = 0;
  for (size_t i = 0; i < ns; i += 2) { memcpy(tbuf + at, shorts[i].p, shorts[i].n); at += shorts[i].n; tsz[k++] = shorts[i].n; }
  void *dict = malloc(dict_cap);
  double t0 = now();
  size_t dsize = ZDICT_trainFromBuffer(dict, dict_cap, tbuf, tsz, (unsigned)tn);
  double train_s = now() - t0;
  if (ZDICT_isError(dsize)) { printf("train failed: %s\n", ZDICT_getErrorName(dsize)); return 1; }
  printf("dictionary %zu bytes, trained on %zu blocks (%.1f MB) in %.2f s\n", dsize, tn, tbytes / 1e6, train_s);

  ZSTD_CCtx *cc = ZSTD_createCCtx();
  ZSTD_DCtx *dc = ZSTD_createDCtx();
  ZSTD_CDict *cd = ZSTD_createCDict(dict, dsize, level);
  ZSTD_DDict *dd = ZSTD_createDDict(dict, dsize);
  size_t cap = ZSTD_compressBound(CHUNK);
  char *out = malloc(cap), *back = malloc(CHUNK);
  for (int use = 0; use < 2; use++) {
    // Short blocks alone (odd ones: not trained on), and all of them.
    size_t odd_in = 0, odd_out = 0, all_out = 0;
    double c0 = now();
    for (size_t i = 0; i < ns; i++) {
      size_t r = use ? ZSTD_compress_usingCDict(cc, out, cap, shorts[i].p, shorts[i].n, cd) : ZSTD_compressCCtx(cc, out, cap, shorts[i].p, shorts[i].n, level);
      all_out += r; if (i & 1) { odd_in += shorts[i].n; odd_out += r; }
    }
    double cs_ = now() - c0;
    // Super-chunks of up to 1 MiB in walk order.
    size_t chunk_out = 0, nchunks = 0; double ct = 0, dt = 0;
    char *chunk = malloc(CHUNK); size_t fill = 0;
    for (size_t i = 0; i <= ns; i++) {
      if (i == ns || (fill + shorts[i].n > CHUNK && fill)) {
        double a = now();
        size_t r = use ? ZSTD_compress_usingCDict(cc, out, cap, chunk, fill, cd) : ZSTD_compressCCtx(cc, out, cap, chunk, fill, level);
        ct += now() - a;
        a = now();
        size_t b = use ? ZSTD_decompress_usingDDict(dc, back, CHUNK, out, r, dd) : ZSTD_decompressDCtx(dc, back, CHUNK, out, r);
        dt += now() - a;
        if (b != fill || memcmp(back, chunk, fill)) { printf("round trip failed\n"); return 1; }
        chunk_out += r; nchunks++; fill = 0;
        if (i == ns) break;
      }
      memcpy(chunk + fill, shorts[i].p, shorts[i].n); fill += shorts[i].n;
    }
    printf("%s level %d: short blocks alone %.4f of their bytes (untrained half %.4f), %.0f MB/s; "
           "1 MiB super-chunks (%zu) %.4f, compress %.0f MB/s, decompress %.0f MB/s\n",
           use ? "with dictionary   " : "without dictionary", level, (double)all_out / short_bytes, (double)odd_out / odd_in,
           short_bytes / cs_ / 1e6, nchunks, (double)chunk_out / short_bytes, short_bytes / ct / 1e6, short_bytes / dt / 1e6);
  }
  return 0;
}
