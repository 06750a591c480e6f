import { blake3 } from '@napi-rs/blake-hash';

/** Length in bytes of a block key (a BLAKE3-256 digest). */
export const HASH_LENGTH = 32;
export const HASH_ALGORITHM = 'blake3';

/**
 * BLAKE3 of a block, through the native binding (2.5–4 GB/s here; the wasm builds of
 * the `blake3` package manage 0.35–0.9 GB/s, which is why that package is not used).
 */
export function hashBlock(data: Uint8Array): Buffer {
  return blake3(data);
}

export function hashHex(hash: Uint8Array): string {
  return Buffer.from(hash.buffer, hash.byteOffset, hash.byteLength).toString('hex');
}
