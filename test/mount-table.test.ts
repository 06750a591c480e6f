import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { decodeMountField, escapeMountOption, findMount, parseMountinfo, readMountTable } from '../src/fuse/mount-table';

/** The one reader of /proc/self/mountinfo and the one encoding of a mount option's value. */

describe('mount table', () => {
  it('decodes the octal escapes of mountinfo and keeps UTF-8 bytes as they are', () => {
    assert.equal(decodeMountField(Buffer.from('/tmp/a\\040b\\134c\\011d\\012e')), '/tmp/a b\\c\td\ne');
    assert.equal(decodeMountField(Buffer.from('/tmp/\u00fc,x')), '/tmp/\u00fc,x');
    // A backslash not followed by three octal digits is itself.
    assert.equal(decodeMountField(Buffer.from('/a\\09')), '/a\\09');
  });

  it('parses fields around the optional ones, in mount order', () => {
    const text = Buffer.from(
      [
        '22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw',
        '97 22 0:52 / /tmp/mnt\\040a,b rw,nosuid,nodev,relatime shared:50 master:3 - fuse.pogfs /tmp/vol\\040a,b\\134c rw,user_id=0',
        '98 97 0:53 / /tmp/mnt\\040a,b rw - tmpfs tmpfs rw',
        '',
      ].join('\n'),
    );
    const table = parseMountinfo(text);
    assert.deepEqual(table[1], { source: '/tmp/vol a,b\\c', target: '/tmp/mnt a,b', type: 'fuse.pogfs', device: '0:52' });
    assert.equal(table.length, 3);
    // Stacked mounts: the one on top wins.
    assert.equal(findMount('/tmp/mnt a,b', table)?.type, 'tmpfs');
    assert.equal(findMount('/tmp/mnt', table), undefined);
  });

  it('reads this process\'s own table', () => {
    assert.equal(findMount('/', readMountTable())?.target, '/');
  });

  it('escapes an option value the way libfuse splits options', () => {
    assert.equal(escapeMountOption('/v,a b\\c'), '/v\\,a b\\\\c');
  });
});
