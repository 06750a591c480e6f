import type { FileContent } from './file-content';

/** Bytes copied as bytes in one read and write (edges, misaligned ranges, blocks with uncommitted bytes). */
const BYTE_COPY_CHUNK = 1024 * 1024;

/** Where a copy goes: the file, and which of its blocks and offsets. */
export interface RangeCopy {
  src: FileContent;
  srcOffset: number;
  dst: FileContent;
  dstOffset: number;
  length: number;
  blockSize: number;
  /**
   * Called before `bytes` are copied as bytes: may refuse (ENOSPC) or make the copy wait
   * (the writer's memory bound), as it does for a write of that size.
   */
  admitBytes?(bytes: number): void | Promise<void>;
}

/**
 * copy_file_range within a volume. The length is clipped to the source's size. Where
 * source and destination offsets are congruent modulo the block size, every block the
 * range covers whole is copied by reference (the destination's block map takes the
 * source's hash and the store one more reference on it: no bytes read or written), as
 * is a last source block the copy ends with when nothing of the destination lies past
 * it. The rest (edges, misaligned ranges, blocks whose bytes are not yet committed) is
 * read and written as bytes. Returns the bytes copied.
 */
export async function copyRange(c: RangeCopy): Promise<number> {
  const { src, dst, srcOffset, dstOffset, blockSize: B } = c;
  const length = Math.max(0, Math.min(c.length, src.size - srcOffset));
  let done = 0;

  const copyBytes = async (upTo: number): Promise<void> => {
    while (done < upTo) {
      const want = Math.min(BYTE_COPY_CHUNK, upTo - done);
      await c.admitBytes?.(want);
      const data = await src.read(srcOffset + done, want);
      if (data.length === 0) return;
      await dst.write(data, dstOffset + done);
      done += data.length;
    }
  };

  if ((((srcOffset - dstOffset) % B) + B) % B !== 0) {
    await copyBytes(length);
    return done;
  }
  // Up to the first block boundary (the same in both files).
  await copyBytes(Math.min(length, (B - (dstOffset % B)) % B));
  while (done < length) {
    const n = Math.min(B, length - done);
    const srcEnd = srcOffset + done + n;
    const dstEnd = dstOffset + done + n;
    // A short last piece is shared only if it is the source's last block and the copy
    // leaves nothing of the destination's old content after it in that block.
    const whole = n === B || (srcEnd === src.size && dstEnd >= dst.size);
    const block = whole ? src.blockForSharing(Math.floor((srcOffset + done) / B)) : 'bytes';
    if (block === 'bytes' || (block !== undefined && block.len > n)) {
      await copyBytes(done + n);
      if (done < srcEnd - srcOffset) return done; // the source shrank meanwhile
      continue;
    }
    await dst.shareBlock(Math.floor((dstOffset + done) / B), block, dstEnd);
    done += n;
  }
  return done;
}
