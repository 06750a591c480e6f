/**
 * The on-disk form of the values in the block store: an 8-byte header, then the payload.
 *
 *   byte 0    format version (1)
 *   byte 1    kind: 0 = raw bytes, 1 = LZ4 block format, 2 = locator (the block lives
 *             inside a super-chunk; see below)
 *   byte 2-3  reserved, zero
 *   byte 4-7  raw (decoded) length, little-endian
 *
 * Raw and LZ4 values hold the bytes themselves: a block stored alone (a "loose" block),
 * or a whole super-chunk (many short blocks concatenated and compressed as one unit).
 * A locator value (payload: chunk id u64 LE, offset u32 LE) says where in the decoded
 * bytes of a super-chunk a block sits; its header's raw length is the block's length.
 *
 * A reader looks at the kind byte of each value, so a volume may hold raw, LZ4 and
 * super-chunked blocks at once (changing a volume's settings only affects new blocks).
 *
 * LZ4 payloads are plain LZ4 block format (no frame, no size prefix). lz4-napi's
 * decoders want a little-endian u32 size in front of the block: header bytes 4-7 are
 * exactly that, so decoding hands it `value.subarray(4)` without copying anything.
 */
import { compress, compressSync, uncompress, uncompressSync } from 'lz4-napi';

export const BLOCK_HEADER_SIZE = 8;
export const BLOCK_FORMAT_VERSION = 1;

export enum Codec {
  Raw = 0,
  Lz4 = 1,
}

/** Byte 1 of a locator value (not a codec: the bytes are elsewhere). */
export const LOCATOR_KIND = 2;
/** Header + chunk id (u64) + offset (u32). */
export const LOCATOR_SIZE = BLOCK_HEADER_SIZE + 12;

/** A volume's compression setting, as stored in its settings and given on the command line. */
export type Compression = 'none' | 'lz4';
export const COMPRESSIONS: readonly Compression[] = ['lz4', 'none'];

export function codecFor(compression: string): Codec {
  if (compression === 'lz4') return Codec.Lz4;
  if (compression === 'none') return Codec.Raw;
  throw new Error(`unknown compression ${JSON.stringify(compression)} (known: ${COMPRESSIONS.join(', ')})`);
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
}

/**
 * The stored value for `data`. With `Codec.Lz4`, the LZ4 form is kept only if it saves at
 * least 1/8; otherwise (and for data whose first 8 KiB do not compress) the value is raw.
 */
export function encodeBlock(data: Uint8Array, codec: Codec = Codec.Raw, options: EncodeOptions = {}): Buffer {
  if (codec === Codec.Lz4 && data.byteLength > 0) {
    const input = asBuffer(data);
    if (!probeFails(input, options.probeBytes ?? PROBE_BYTES)) {
      const compressed = lz4Value(input, compressSync(input));
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
  if (codec === Codec.Lz4 && data.byteLength > 0) {
    const input = asBuffer(data);
    if (!probeFails(input, options.probeBytes ?? PROBE_BYTES)) {
      const compressed = lz4Value(input, await compress(input));
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

/** True when the first bytes of `input` do not compress: the whole block is then stored raw. */
function probeFails(input: Buffer, probeBytes: number): boolean {
  if (probeBytes <= 0 || input.length < 2 * probeBytes) return false;
  // compressSync output = 4-byte size prefix + LZ4 block.
  const sample = compressSync(input.subarray(0, probeBytes)).length - 4;
  return sample > probeBytes - (probeBytes >> PROBE_SAVING_SHIFT);
}

/** The LZ4 value from lz4-napi's output (size prefix + block), or undefined when it saves less than 1/8. */
function lz4Value(input: Buffer, framed: Buffer): Buffer | undefined {
  const payload = framed.length - 4;
  if (payload > input.length - (input.length >> MIN_SAVING_SHIFT)) return undefined;
  const out = Buffer.allocUnsafe(BLOCK_HEADER_SIZE + payload);
  writeHeader(out, Codec.Lz4, input.length);
  framed.copy(out, BLOCK_HEADER_SIZE, 4);
  return out;
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

/** Reads and sanity-checks the header (not the payload: a bad LZ4 stream shows only when decoded). */
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
  } else if (codec === LOCATOR_KIND) {
    if (value.length !== LOCATOR_SIZE) throw new CorruptBlockError('malformed super-chunk locator');
  } else {
    throw new CorruptBlockError(`block uses unknown codec ${codec}`);
  }
  return { codec: codec as Codec | typeof LOCATOR_KIND, rawLength };
}

/**
 * The decoded bytes of a raw or LZ4 value: a view into it for raw ones (no copy), a new
 * buffer of the header's raw length for LZ4 ones. Throws CorruptBlockError for anything
 * malformed, and for a locator (which holds no bytes).
 */
export function decodeBlock(value: Buffer): Buffer {
  const { codec, rawLength } = decodeHeader(value);
  if (codec === Codec.Raw) return value.subarray(BLOCK_HEADER_SIZE);
  if (codec === LOCATOR_KIND) throw new CorruptBlockError('a locator holds no bytes');
  let out: Buffer;
  try {
    // Bytes 4-7 (the raw length, little-endian) serve as lz4-napi's size prefix.
    out = uncompressSync(value.subarray(4));
  } catch (err) {
    throw new CorruptBlockError(`LZ4 block does not decompress: ${(err as Error).message}`);
  }
  return checkLength(out, rawLength);
}

/** `decodeBlock` with LZ4 decompression on libuv's thread pool (for super-chunks: a millisecond or more). */
export async function decodeBlockAsync(value: Buffer): Promise<Buffer> {
  const { codec, rawLength } = decodeHeader(value);
  if (codec === Codec.Raw) return value.subarray(BLOCK_HEADER_SIZE);
  if (codec === LOCATOR_KIND) throw new CorruptBlockError('a locator holds no bytes');
  let out: Buffer;
  try {
    out = await uncompress(value.subarray(4));
  } catch (err) {
    throw new CorruptBlockError(`LZ4 block does not decompress: ${(err as Error).message}`);
  }
  return checkLength(out, rawLength);
}

function checkLength(out: Buffer, rawLength: number): Buffer {
  if (out.length !== rawLength) {
    throw new CorruptBlockError(`LZ4 block decompresses to ${out.length} bytes, its header says ${rawLength}`);
  }
  return out;
}
