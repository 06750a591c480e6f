/**
 * The on-disk form of the values in the block store: an 8-byte header, then the payload.
 *
 *   byte 0    format version (1)
 *   byte 1    kind: 0 = raw bytes, 1 = LZ4 block format, 2 = locator (the block lives
 *             inside a super-chunk; see below), 3 = zstd frame
 *   byte 2-3  reserved, zero
 *   byte 4-7  raw (decoded) length, little-endian
 *
 * Raw, LZ4 and zstd values hold the bytes themselves: a block stored alone (a "loose"
 * block), or a whole super-chunk (many short blocks concatenated and compressed as one
 * unit). A locator value (payload: chunk id u64 LE, offset u32 LE) says where in the
 * decoded bytes of a super-chunk a block sits; its header's raw length is the block's length.
 *
 * A reader looks at the kind byte of each value, so a volume may hold raw, LZ4, zstd and
 * super-chunked blocks at once (changing a volume's settings only affects new blocks).
 *
 * LZ4 payloads are plain LZ4 block format (no frame, no size prefix). lz4-napi's
 * decoders want a little-endian u32 size in front of the block: header bytes 4-7 are
 * exactly that, so decoding hands it `value.subarray(4)` without copying anything.
 *
 * zstd payloads are one zstd frame with its content size and no checksum (the BLAKE3 key
 * checks the bytes); a frame whose content size is not the header's raw length is corrupt
 * before anything is decoded (zstd.ts). The level is not stored: decoding does not need it.
 */
import { compress, compressSync, uncompress, uncompressSync } from 'lz4-napi';
import { DEFAULT_ZSTD_LEVEL, MAX_ZSTD_LEVEL, MIN_ZSTD_LEVEL, zstdCompress, zstdCompressSync, zstdDecompress, zstdDecompressSync } from './zstd';

export const BLOCK_HEADER_SIZE = 8;
export const BLOCK_FORMAT_VERSION = 1;

export enum Codec {
  Raw = 0,
  Lz4 = 1,
  Zstd = 3,
}

/** Byte 1 of a locator value (not a codec: the bytes are elsewhere). */
export const LOCATOR_KIND = 2;
/** Header + chunk id (u64) + offset (u32). */
export const LOCATOR_SIZE = BLOCK_HEADER_SIZE + 12;

/** The name of a value's kind byte, as stats and fsck print it. */
export function kindName(kind: number): string {
  if (kind === Codec.Raw) return 'raw';
  if (kind === Codec.Lz4) return 'lz4';
  if (kind === Codec.Zstd) return 'zstd';
  if (kind === LOCATOR_KIND) return 'locator';
  return `unknown(${kind})`;
}

/** A codec's name in error messages ("LZ4 block does not decompress", "zstd block ..."). */
function codecLabel(codec: Codec): string {
  return codec === Codec.Lz4 ? 'LZ4' : kindName(codec);
}

/**
 * A volume's compression setting, as stored in its settings and printed: `none`, `lz4`,
 * or `zstd:LEVEL` (the command line also takes `zstd` alone, for the default level).
 */
export type Compression = 'none' | 'lz4' | `zstd:${number}`;
/** What `--compression` accepts, for messages. */
export const COMPRESSION_CHOICES = `none, lz4, zstd or zstd:LEVEL (${MIN_ZSTD_LEVEL} to ${MAX_ZSTD_LEVEL}; zstd alone is zstd:${DEFAULT_ZSTD_LEVEL})`;

/** How new values are encoded: a codec, and for zstd its level. */
export interface BlockEncoding {
  codec: Codec;
  /** zstd's level (ignored by the other codecs). */
  level: number;
}

/** The canonical setting for `text`; throws a one-line error naming what is accepted. */
export function parseCompression(text: string): Compression {
  const t = text.trim().toLowerCase();
  if (t === 'none' || t === 'lz4') return t;
  const m = /^zstd(?::(.*))?$/.exec(t);
  if (!m) throw new Error(`unknown compression ${JSON.stringify(text)} (choose ${COMPRESSION_CHOICES})`);
  if (m[1] === undefined) return `zstd:${DEFAULT_ZSTD_LEVEL}`;
  const level = /^\d+$/.test(m[1]) ? Number(m[1]) : NaN;
  if (!(level >= MIN_ZSTD_LEVEL && level <= MAX_ZSTD_LEVEL)) {
    throw new Error(`zstd level ${JSON.stringify(m[1])} is not a whole number from ${MIN_ZSTD_LEVEL} to ${MAX_ZSTD_LEVEL}`);
  }
  return `zstd:${level}`;
}

/** The encoding a (canonical) setting stands for. */
export function encodingOf(compression: Compression): BlockEncoding {
  if (compression === 'none') return { codec: Codec.Raw, level: 0 };
  if (compression === 'lz4') return { codec: Codec.Lz4, level: 0 };
  return { codec: Codec.Zstd, level: Number(compression.slice('zstd:'.length)) };
}

export class CorruptBlockError extends Error {
  readonly errno = 5; // EIO: wrong bytes are never served
}

/**
 * Compressed values are kept only when they save at least 1/8 of the raw size: below
 * that, the decompression cost on every read is not worth the space.
 */
export const MIN_SAVING_SHIFT = 3;
/** Bytes compressed first, as a probe, before compressing a block of at least twice that whole. */
export const PROBE_BYTES = 8 * 1024;
/** A probe that does not save at least 1/16 (shift 4) marks the block as incompressible. */
const PROBE_SAVING_SHIFT = 4;
/** LZ4 cannot expand more than about 255 times (plus a few bytes): a larger claimed length is corrupt. */
const LZ4_MAX_RATIO = 256;

export interface EncodeOptions {
  /** The probe's size (0: no probe), for measuring what it saves. */
  probeBytes?: number;
  /** zstd's level (default DEFAULT_ZSTD_LEVEL); the other codecs have none. */
  level?: number;
}

/**
 * The stored value for `data`. With a compressing codec, the compressed form is kept only
 * if it saves at least 1/8; otherwise (and for data whose first 8 KiB do not compress)
 * the value is raw.
 */
export function encodeBlock(data: Uint8Array, codec: Codec = Codec.Raw, options: EncodeOptions = {}): Buffer {
  if (codec !== Codec.Raw && data.byteLength > 0) {
    const input = asBuffer(data);
    if (!probeFails(input, codec, options.probeBytes ?? PROBE_BYTES)) {
      const compressed = compressedValue(input, codec, compressSyncWith(codec, input, options.level));
      if (compressed) return compressed;
    }
  }
  return rawValue(data);
}

/**
 * `encodeBlock` with the compression itself done on libuv's thread pool, so the JavaScript
 * thread (which serves every FUSE request) keeps serving while a block compresses. The
 * cheap probe stays here: an incompressible block never leaves this thread.
 */
export async function encodeBlockAsync(data: Uint8Array, codec: Codec = Codec.Raw, options: EncodeOptions = {}): Promise<Buffer> {
  if (codec !== Codec.Raw && data.byteLength > 0) {
    const input = asBuffer(data);
    if (!probeFails(input, codec, options.probeBytes ?? PROBE_BYTES)) {
      const compressed = compressedValue(input, codec, await compressAsyncWith(codec, input, options.level));
      if (compressed) return compressed;
    }
  }
  return rawValue(data);
}

/** The raw value of `data` (header + a copy of the bytes). */
export function rawValue(data: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(BLOCK_HEADER_SIZE + data.byteLength);
  writeHeader(out, Codec.Raw, data.byteLength);
  out.set(data, BLOCK_HEADER_SIZE);
  return out;
}

/** True when a value holds compressed bytes (LZ4 or zstd), not raw ones or a locator. */
export function isCompressed(value: Buffer): boolean {
  return value.length >= 2 && (value[1] === Codec.Lz4 || value[1] === Codec.Zstd);
}

/** The fastest zstd level: what the probe uses, as it only asks whether the data compresses at all. */
const ZSTD_PROBE_LEVEL = 1;

/**
 * True when the first bytes of `input` do not compress: the whole block is then stored
 * raw. The probe uses the block's own codec (zstd's entropy stage saves on data LZ4
 * finds no matches in, such as base64), at its fastest.
 */
function probeFails(input: Buffer, codec: Codec, probeBytes: number): boolean {
  if (probeBytes <= 0 || input.length < 2 * probeBytes) return false;
  const sample = payloadOf(codec, compressSyncWith(codec, input.subarray(0, probeBytes), ZSTD_PROBE_LEVEL)).length;
  return sample > probeBytes - (probeBytes >> PROBE_SAVING_SHIFT);
}

/** What a compressor returned, on this thread: lz4-napi's size prefix + block, or a zstd frame. */
function compressSyncWith(codec: Codec, input: Buffer, level = DEFAULT_ZSTD_LEVEL): Buffer {
  return codec === Codec.Zstd ? zstdCompressSync(input, level) : compressSync(input);
}

function compressAsyncWith(codec: Codec, input: Buffer, level = DEFAULT_ZSTD_LEVEL): Promise<Buffer> {
  return codec === Codec.Zstd ? zstdCompress(input, level) : compress(input);
}

/** The payload in a compressor's output (lz4-napi puts a 4-byte size in front of the block). */
function payloadOf(codec: Codec, out: Buffer): Buffer {
  return codec === Codec.Lz4 ? out.subarray(4) : out;
}

/** The value holding a compressor's output, or undefined when it saves less than 1/8. */
function compressedValue(input: Buffer, codec: Codec, out: Buffer): Buffer | undefined {
  const payload = payloadOf(codec, out);
  if (payload.length > input.length - (input.length >> MIN_SAVING_SHIFT)) return undefined;
  const value = Buffer.allocUnsafe(BLOCK_HEADER_SIZE + payload.length);
  writeHeader(value, codec, input.length);
  payload.copy(value, BLOCK_HEADER_SIZE);
  return value;
}

function asBuffer(data: Uint8Array): Buffer {
  return Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
}

function writeHeader(out: Buffer, kind: number, rawLength: number): void {
  out[0] = BLOCK_FORMAT_VERSION;
  out[1] = kind;
  out[2] = 0;
  out[3] = 0;
  out.writeUInt32LE(rawLength, 4);
}

/** Where a block inside a super-chunk lives. */
export interface Locator {
  chunk: number;
  offset: number;
  length: number;
}

export function encodeLocator(l: Locator): Buffer {
  const out = Buffer.allocUnsafe(LOCATOR_SIZE);
  writeHeader(out, LOCATOR_KIND, l.length);
  out.writeBigUInt64LE(BigInt(l.chunk), BLOCK_HEADER_SIZE);
  out.writeUInt32LE(l.offset, BLOCK_HEADER_SIZE + 8);
  return out;
}

export function isLocator(value: Buffer): boolean {
  return value.length >= 2 && value[1] === LOCATOR_KIND;
}

/** The locator a value holds; throws CorruptBlockError when it is not a well-formed one. */
export function decodeLocator(value: Buffer): Locator {
  if (value.length !== LOCATOR_SIZE || value[0] !== BLOCK_FORMAT_VERSION || value[1] !== LOCATOR_KIND) {
    throw new CorruptBlockError('malformed super-chunk locator');
  }
  return {
    chunk: Number(value.readBigUInt64LE(BLOCK_HEADER_SIZE)),
    offset: value.readUInt32LE(BLOCK_HEADER_SIZE + 8),
    length: value.readUInt32LE(4),
  };
}

export interface DecodedHeader {
  /** Codec of a value holding bytes, or LOCATOR_KIND. */
  codec: Codec | typeof LOCATOR_KIND;
  rawLength: number;
}

/** Reads and sanity-checks the header (not the payload: a bad compressed stream shows only when decoded). */
export function decodeHeader(value: Buffer): DecodedHeader {
  if (value.length < BLOCK_HEADER_SIZE || value[0] !== BLOCK_FORMAT_VERSION) {
    throw new CorruptBlockError('block value has no valid header');
  }
  const codec = value[1];
  // `length`, not `byteLength`: LMDB's zero-copy buffers report the whole shared area as byteLength.
  const rawLength = value.readUInt32LE(4);
  const payload = value.length - BLOCK_HEADER_SIZE;
  if (codec === Codec.Raw) {
    if (rawLength !== payload) throw new CorruptBlockError(`block length ${payload} disagrees with header ${rawLength}`);
  } else if (codec === Codec.Lz4) {
    if (payload === 0 || rawLength > payload * LZ4_MAX_RATIO + 64) {
      throw new CorruptBlockError(`LZ4 block of ${payload} bytes cannot hold the ${rawLength} bytes its header claims`);
    }
  } else if (codec === Codec.Zstd) {
    // zstd may expand far more than LZ4; the frame's own content size is checked against
    // the header before anything is allocated (zstd.ts).
    if (payload < ZSTD_MIN_FRAME) throw new CorruptBlockError(`zstd value of ${payload} bytes is shorter than any frame`);
  } else if (codec === LOCATOR_KIND) {
    if (value.length !== LOCATOR_SIZE) throw new CorruptBlockError('malformed super-chunk locator');
  } else {
    throw new CorruptBlockError(`block uses unknown codec ${codec}`);
  }
  return { codec: codec as Codec | typeof LOCATOR_KIND, rawLength };
}

/** Magic number (4) + frame header (at least 2) + one block header (3). */
const ZSTD_MIN_FRAME = 9;

/**
 * The decoded bytes of a raw, LZ4 or zstd value: a view into it for raw ones (no copy), a
 * new buffer of the header's raw length for compressed ones. Throws CorruptBlockError
 * for anything malformed (a compressed value that does not decode to exactly its
 * header's length included), and for a locator (which holds no bytes).
 */
export function decodeBlock(value: Buffer): Buffer {
  const { codec, rawLength } = decodeHeader(value);
  if (codec === Codec.Raw) return value.subarray(BLOCK_HEADER_SIZE);
  if (codec === LOCATOR_KIND) throw new CorruptBlockError('a locator holds no bytes');
  let out: Buffer;
  try {
    // LZ4: bytes 4-7 (the raw length, little-endian) serve as lz4-napi's size prefix.
    out = codec === Codec.Zstd ? zstdDecompressSync(value.subarray(BLOCK_HEADER_SIZE), rawLength) : uncompressSync(value.subarray(4));
  } catch (err) {
    throw new CorruptBlockError(`${codecLabel(codec)} block does not decompress: ${(err as Error).message}`);
  }
  return checkLength(out, codec, rawLength);
}

/** `decodeBlock` with decompression on libuv's thread pool (for super-chunks: a millisecond or more). */
export async function decodeBlockAsync(value: Buffer): Promise<Buffer> {
  const { codec, rawLength } = decodeHeader(value);
  if (codec === Codec.Raw) return value.subarray(BLOCK_HEADER_SIZE);
  if (codec === LOCATOR_KIND) throw new CorruptBlockError('a locator holds no bytes');
  let out: Buffer;
  try {
    out = codec === Codec.Zstd ? await zstdDecompress(value.subarray(BLOCK_HEADER_SIZE), rawLength) : await uncompress(value.subarray(4));
  } catch (err) {
    throw new CorruptBlockError(`${codecLabel(codec)} block does not decompress: ${(err as Error).message}`);
  }
  return checkLength(out, codec, rawLength);
}

function checkLength(out: Buffer, codec: Codec, rawLength: number): Buffer {
  if (out.length !== rawLength) {
    throw new CorruptBlockError(`${codecLabel(codec)} block decompresses to ${out.length} bytes, its header says ${rawLength}`);
  }
  return out;
}
