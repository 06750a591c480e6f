import { CorruptBlockError, decodeBlock, decodeBlockAsync } from './codec';
import { hashBlock } from './hash';

/**
 * Verification of stored and fetched bytes against their keys (DESIGN invariant 2): a
 * block's key is the BLAKE3 hash of its decoded bytes, so a value is decoded first
 * (decompressed, its length checked against its header) and then hashed. Every reader
 * that must not pass on wrong bytes (the store's reads, the fetcher, the packer, fsck)
 * goes through these functions.
 */

/** Where a block sits in the decoded bytes of a value holding several (a super-chunk). */
export interface MemberPlace {
  hash: Buffer;
  offset: number;
  length: number;
}

/** The one test of bytes against their key. */
export function blockMatches(bytes: Uint8Array, hash: Buffer): boolean {
  return hashBlock(bytes).equals(hash);
}

/**
 * The bytes of the block at `offset`, `length` in decoded bytes `data` (a view, no copy),
 * when they lie within `data` and match `hash`; undefined otherwise.
 */
export function verifiedMember(data: Buffer, hash: Buffer, offset: number, length: number): Buffer | undefined {
  if (offset + length > data.length) return undefined;
  const bytes = data.subarray(offset, offset + length);
  return blockMatches(bytes, hash) ? bytes : undefined;
}

/**
 * The decoded bytes of a loose value (a view for raw values), verified against `hash`.
 * Throws CorruptBlockError saying what is wrong: a malformed header, a payload that does
 * not decode to its header's length, or bytes that are not the block the key names.
 */
export function decodeVerified(value: Buffer, hash: Buffer): Buffer {
  const data = decodeBlock(value);
  if (!blockMatches(data, hash)) throw new CorruptBlockError('bytes do not match their BLAKE3 key');
  return data;
}

/**
 * Decodes a value holding one block or several (decompression on libuv's thread pool)
 * and verifies each listed member: its bytes (a view into the decoded value), or
 * undefined for a member whose bytes are wrong or out of range. Every member is
 * undefined when the value does not decode.
 */
export async function decodeMembersAsync(value: Buffer, members: readonly MemberPlace[]): Promise<(Buffer | undefined)[]> {
  let data: Buffer;
  try {
    data = await decodeBlockAsync(value);
  } catch {
    return members.map(() => undefined);
  }
  return members.map((m) => verifiedMember(data, m.hash, m.offset, m.length));
}
