import { hashBlock } from '../store/hash';
import type { PackEntry } from '../meta/remote-index';

/**
 * A pack: stored values (loose blocks and super-chunks, exactly as the local store keeps
 * them: header + raw, LZ4 or zstd bytes) one after another, then the pack's own index, then a
 * trailer. The index lists every block: which value holds it (offset and length in the
 * pack) and where in that value's decoded bytes it sits. The metadata database keeps the
 * same rows; the copy inside the pack is what rebuilds them when the database is lost.
 *
 *   values ... | index: count u32, then per block: hash (32) | value offset u64 |
 *              |        value length u32 | block offset u32 | block length u32
 *   trailer (44 bytes): BLAKE3 of the index (32) | index length u32 | magic "POGPACK1"
 */

const MAGIC = Buffer.from('POGPACK1');
export const PACK_TRAILER_SIZE = 32 + 4 + MAGIC.length;
const ENTRY_SIZE = 32 + 8 + 4 + 4 + 4;

export class PackFormatError extends Error {}

/**
 * The most bytes a pack built to `packBytes` usually has: it stops once it reaches that size,
 * so it overshoots by one stored value (a block of at most 4 MiB, or a 1 MiB super-chunk)
 * with its index entries.
 */
export function maxPackSize(packBytes: number): number {
  return packBytes + (5 << 20);
}

/** Builds a pack in memory. */
export class PackBuilder {
  private readonly parts: Buffer[] = [];
  private readonly entries: PackEntry[] = [];
  private bytes = 0;

  /** Bytes the pack would have if finished now: values, index and trailer. */
  get size(): number {
    return this.bytes + 4 + this.entries.length * ENTRY_SIZE + PACK_TRAILER_SIZE;
  }

  get blockCount(): number {
    return this.entries.length;
  }

  /** Appends a stored value and the blocks it holds. */
  add(value: Buffer, members: readonly { hash: Buffer; blockOffset: number; length: number }[]): void {
    const valueOffset = this.bytes;
    this.parts.push(value);
    this.bytes += value.length;
    for (const m of members) this.entries.push({ hash: m.hash, valueOffset, valueLength: value.length, blockOffset: m.blockOffset, length: m.length });
  }

  finish(): { data: Buffer; entries: PackEntry[] } {
    const index = encodeIndex(this.entries);
    const trailer = Buffer.allocUnsafe(PACK_TRAILER_SIZE);
    hashBlock(index).copy(trailer, 0);
    trailer.writeUInt32LE(index.length, 32);
    MAGIC.copy(trailer, 36);
    return { data: Buffer.concat([...this.parts, index, trailer]), entries: this.entries };
  }
}

function encodeIndex(entries: readonly PackEntry[]): Buffer {
  const out = Buffer.allocUnsafe(4 + entries.length * ENTRY_SIZE);
  out.writeUInt32LE(entries.length, 0);
  let at = 4;
  for (const e of entries) {
    e.hash.copy(out, at);
    out.writeBigUInt64LE(BigInt(e.valueOffset), at + 32);
    out.writeUInt32LE(e.valueLength, at + 40);
    out.writeUInt32LE(e.blockOffset, at + 44);
    out.writeUInt32LE(e.length, at + 48);
    at += ENTRY_SIZE;
  }
  return out;
}

/** The index length a pack's trailer gives (the trailer is the last PACK_TRAILER_SIZE bytes). */
export function indexLength(trailer: Buffer): number {
  if (trailer.length !== PACK_TRAILER_SIZE || !trailer.subarray(36).equals(MAGIC)) throw new PackFormatError('not a pogfs pack (bad trailer)');
  return trailer.readUInt32LE(32);
}

/** The entries of a pack's index, checked against the trailer's hash and the pack's size. */
export function decodeIndex(index: Buffer, trailer: Buffer, packSize: number): PackEntry[] {
  if (index.length !== indexLength(trailer)) throw new PackFormatError('pack index length disagrees with its trailer');
  if (!hashBlock(index).equals(trailer.subarray(0, 32))) throw new PackFormatError('pack index does not match its hash');
  const count = index.readUInt32LE(0);
  if (index.length !== 4 + count * ENTRY_SIZE) throw new PackFormatError('pack index has a bad entry count');
  const valuesEnd = packSize - PACK_TRAILER_SIZE - index.length;
  const out: PackEntry[] = [];
  for (let i = 0, at = 4; i < count; i++, at += ENTRY_SIZE) {
    const e: PackEntry = {
      hash: Buffer.from(index.subarray(at, at + 32)),
      valueOffset: Number(index.readBigUInt64LE(at + 32)),
      valueLength: index.readUInt32LE(at + 40),
      blockOffset: index.readUInt32LE(at + 44),
      length: index.readUInt32LE(at + 48),
    };
    if (e.valueOffset + e.valueLength > valuesEnd) throw new PackFormatError('pack index points past the pack\'s values');
    out.push(e);
  }
  return out;
}
