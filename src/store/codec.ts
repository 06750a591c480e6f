/**
 * The on-disk form of one block value in LMDB: an 8-byte header, then the payload.
 *
 *   byte 0    format version (1)
 *   byte 1    codec (0 = raw; later codecs such as LZ4 get new numbers)
 *   byte 2-3  reserved, zero
 *   byte 4-7  raw (decoded) length, little-endian
 *
 * The header lets compression arrive later without a format break: a reader looks at
 * the codec byte of each block, so volumes may hold blocks of several codecs at once.
 */
export const BLOCK_HEADER_SIZE = 8;
export const BLOCK_FORMAT_VERSION = 1;

export enum Codec {
  Raw = 0,
}

export class CorruptBlockError extends Error {
  readonly errno = 5; // EIO: wrong bytes are never served
}

export function encodeBlock(data: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(BLOCK_HEADER_SIZE + data.byteLength);
  out[0] = BLOCK_FORMAT_VERSION;
  out[1] = Codec.Raw;
  out[2] = 0;
  out[3] = 0;
  out.writeUInt32LE(data.byteLength, 4);
  out.set(data, BLOCK_HEADER_SIZE);
  return out;
}

export interface DecodedHeader {
  codec: Codec;
  rawLength: number;
}

export function decodeHeader(value: Buffer): DecodedHeader {
  if (value.length < BLOCK_HEADER_SIZE || value[0] !== BLOCK_FORMAT_VERSION) {
    throw new CorruptBlockError('block value has no valid header');
  }
  const codec = value[1] as Codec;
  if (codec !== Codec.Raw) throw new CorruptBlockError(`block uses unknown codec ${codec}`);
  // `length`, not `byteLength`: LMDB's zero-copy buffers report the whole shared area as byteLength.
  const rawLength = value.readUInt32LE(4);
  if (rawLength !== value.length - BLOCK_HEADER_SIZE) {
    throw new CorruptBlockError(`block length ${value.length - BLOCK_HEADER_SIZE} disagrees with header ${rawLength}`);
  }
  return { codec, rawLength };
}

/** The decoded bytes of a value, as a view into it (no copy for raw blocks). */
export function decodeBlock(value: Buffer): Buffer {
  decodeHeader(value);
  return value.subarray(BLOCK_HEADER_SIZE);
}
