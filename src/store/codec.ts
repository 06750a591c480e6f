/**
 * The on-disk form of one block value in LMDB: an 8-byte header, then the payload.
 *
 *   byte 0    format version (1)
 *   byte 1    codec (0 = raw, 1 = LZ4 block format)
 *   byte 2-3  reserved, zero
 *   byte 4-7  raw (decoded) length, little-endian
 *
 * A reader looks at the codec byte of each block, so a volume may hold blocks of several
 * codecs at once (changing a volume's compression setting only affects new blocks).
 *
 * LZ4 payloads are plain LZ4 block format (no frame, no size prefix). lz4-napi's
 * `uncompressSync` wants a little-endian u32 size in front of the block: header bytes 4-7
 * are exactly that, so decoding hands it `value.subarray(4)` without copying anything.
 */
import { compressSync, uncompressSync } from 'lz4-napi';

export const BLOCK_HEADER_SIZE = 8;
export const BLOCK_FORMAT_VERSION = 1;

export enum Codec {
  Raw = 0,
  Lz4 = 1,
}

/** A volume's compression setting, as stored in its superblock and given on the command line. */
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
 * Compressed blocks are kept only when they save at least 1/8 of the raw size: below
 * that, the decompression cost on every read is not worth the space.
 */
export const MIN_SAVING_SHIFT = 3;
/** Bytes compressed first, as a probe, before compressing a block of at least twice that whole. */
export const PROBE_BYTES = 8 * 1024;
/** A probe that does not save at least 1/16 (shift 4) marks the block as incompressible. */
const PROBE_SAVING_SHIFT = 4;
/** LZ4 cannot expand more than about 255 times (plus a few bytes): a larger claimed length is corrupt. */
const LZ4_MAX_RATIO = 256;

/**
 * The stored value for `data`. With `Codec.Lz4`, the LZ4 form is kept only if it saves at
 * least 1/8; otherwise (and for data whose first 8 KiB do not compress) the value is raw.
 * `probeBytes` sets the probe's size (0: no probe), for measuring what it saves.
 */
export function encodeBlock(data: Uint8Array, codec: Codec = Codec.Raw, options: { probeBytes?: number } = {}): Buffer {
  if (codec === Codec.Lz4 && data.byteLength > 0) {
    const compressed = compressLz4(data, options.probeBytes ?? PROBE_BYTES);
    if (compressed) return compressed;
  }
  const out = Buffer.allocUnsafe(BLOCK_HEADER_SIZE + data.byteLength);
  writeHeader(out, Codec.Raw, data.byteLength);
  out.set(data, BLOCK_HEADER_SIZE);
  return out;
}

/** The LZ4 value for `data`, or undefined when compression would not save 1/8. */
function compressLz4(data: Uint8Array, probeBytes: number): Buffer | undefined {
  const input = Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  const limit = input.length - (input.length >> MIN_SAVING_SHIFT);
  if (probeBytes > 0 && input.length >= 2 * probeBytes) {
    // compressSync output = 4-byte size prefix + LZ4 block.
    const sample = compressSync(input.subarray(0, probeBytes)).length - 4;
    if (sample > probeBytes - (probeBytes >> PROBE_SAVING_SHIFT)) return undefined;
  }
  const framed = compressSync(input);
  const payload = framed.length - 4;
  if (payload > limit) return undefined;
  const out = Buffer.allocUnsafe(BLOCK_HEADER_SIZE + payload);
  writeHeader(out, Codec.Lz4, input.length);
  framed.copy(out, BLOCK_HEADER_SIZE, 4);
  return out;
}

function writeHeader(out: Buffer, codec: Codec, rawLength: number): void {
  out[0] = BLOCK_FORMAT_VERSION;
  out[1] = codec;
  out[2] = 0;
  out[3] = 0;
  out.writeUInt32LE(rawLength, 4);
}

export interface DecodedHeader {
  codec: Codec;
  rawLength: number;
}

/** Reads and sanity-checks the header (not the payload: a bad LZ4 stream shows only when decoded). */
export function decodeHeader(value: Buffer): DecodedHeader {
  if (value.length < BLOCK_HEADER_SIZE || value[0] !== BLOCK_FORMAT_VERSION) {
    throw new CorruptBlockError('block value has no valid header');
  }
  const codec = value[1] as Codec;
  // `length`, not `byteLength`: LMDB's zero-copy buffers report the whole shared area as byteLength.
  const rawLength = value.readUInt32LE(4);
  const payload = value.length - BLOCK_HEADER_SIZE;
  if (codec === Codec.Raw) {
    if (rawLength !== payload) throw new CorruptBlockError(`block length ${payload} disagrees with header ${rawLength}`);
  } else if (codec === Codec.Lz4) {
    if (payload === 0 || rawLength > payload * LZ4_MAX_RATIO + 64) {
      throw new CorruptBlockError(`LZ4 block of ${payload} bytes cannot hold the ${rawLength} bytes its header claims`);
    }
  } else {
    throw new CorruptBlockError(`block uses unknown codec ${codec}`);
  }
  return { codec, rawLength };
}

/**
 * The decoded bytes of a value: a view into it for raw blocks (no copy), a new buffer of
 * the header's raw length for LZ4 ones. Throws CorruptBlockError for anything malformed.
 */
export function decodeBlock(value: Buffer): Buffer {
  const { codec, rawLength } = decodeHeader(value);
  if (codec === Codec.Raw) return value.subarray(BLOCK_HEADER_SIZE);
  let out: Buffer;
  try {
    // Bytes 4-7 (the raw length, little-endian) serve as lz4-napi's size prefix.
    out = uncompressSync(value.subarray(4));
  } catch (err) {
    throw new CorruptBlockError(`LZ4 block does not decompress: ${(err as Error).message}`);
  }
  if (out.length !== rawLength) {
    throw new CorruptBlockError(`LZ4 block decompresses to ${out.length} bytes, its header says ${rawLength}`);
  }
  return out;
}
