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
