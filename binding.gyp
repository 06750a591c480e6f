{
  "targets": [
    {
      "target_name": "pogfs_fuse",
      "sources": ["src/fuse/native/pogfs_fuse.c", "src/fuse/native/pogfs_notify.c"],
      "defines": ["FUSE_USE_VERSION=312", "NAPI_VERSION=8"],
      "cflags!": ["-O3"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "<!@(pkg-config fuse3 --cflags)"],
      "cflags_c": ["-std=gnu11"],
      "libraries": ["<!@(pkg-config fuse3 --libs)"]
    },
    {
      "target_name": "pogfs_zstd",
      "sources": ["src/store/native/pogfs_zstd.c"],
      "cflags!": ["-O3"],
      "cflags": ["-O2", "-Wall", "-Wextra", "<!@(pkg-config libzstd --cflags)"],
      "cflags_c": ["-std=gnu11"],
      "libraries": ["<!@(pkg-config libzstd --libs)"]
    }
  ]
}
