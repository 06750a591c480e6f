import { InvalidArgumentError } from 'commander';
import { parseByteSize } from '../format';

/** Parses sizes such as `131072`, `128K`, `1M`, `10GiB` for commander (binary units). */
export function parseSize(text: string): number {
  try {
    return parseByteSize(text);
  } catch (err) {
    throw new InvalidArgumentError((err as Error).message);
  }
}

/** The longest commit interval accepted (like ext4's commit=, whose limit is far longer; past this, a power cut loses too much). */
const MAX_COMMIT_INTERVAL_S = 300;

/** Parses a commit interval in seconds (`5`, `0.5`) for commander. */
export function parseCommitInterval(text: string): number {
  const s = Number(text);
  if (!/^\s*\d+(\.\d+)?\s*$/.test(text) || !(s > 0) || s > MAX_COMMIT_INTERVAL_S) {
    throw new InvalidArgumentError(`"${text}" is not a commit interval: give seconds, more than 0 and at most ${MAX_COMMIT_INTERVAL_S}`);
  }
  return s;
}
