/**
 * Drive names → Linux names. Drive allows `/` and NUL in names, `.` and `..`, names of any
 * length and any number of items of one name in a folder; Linux allows none of that. The
 * rule (documented in the README):
 *
 * 1. `safeBase`: `/` becomes `∕` (U+2215 DIVISION SLASH), NUL becomes `␀` (U+2400), an
 *    empty name `_`, `.` and `..` become `．` and `．．` (U+FF0E FULLWIDTH FULL STOP), and a
 *    name longer than 255 bytes is cut (on a character boundary, the extension kept).
 *    Everything else, case and Unicode normalization included, stays byte for byte.
 * 2. Same-named sibling folders are one directory (merged).
 * 3. Of several items that end up with one base name in one directory, the one that held
 *    the name first keeps it (first scan: folders before files, then oldest, then by id);
 *    each other gets `stem [ID8].ext`, ID8 the first 8 characters of its own Drive id
 *    (more of the id if those clash). A name once given stays while the item keeps its
 *    Drive name and directory, so renaming one duplicate never renames another.
 */

export const NAME_MAX = 255;

/** The sanitized base name of a Drive name (rule 1). */
export function safeBase(driveName: string): string {
  let name = driveName.replace(/\//g, '\u2215').replace(/\0/g, '\u2400');
  if (name === '') name = '_';
  else if (name === '.') name = '\uff0e';
  else if (name === '..') name = '\uff0e\uff0e';
  return fitName(name, '');
}

/** Splits `name.ext` (an extension of 1 to 12 characters after the last dot, not a leading dot). */
function splitExtension(name: string): [string, string] {
  const dot = name.lastIndexOf('.');
  if (dot <= 0 || name.length - dot - 1 > 12 || name.length - dot - 1 < 1) return [name, ''];
  return [name.slice(0, dot), name.slice(dot)];
}

/** Cuts a name's stem until stem + suffix + extension fit in NAME_MAX bytes. */
function fitName(name: string, suffix: string): string {
  if (Buffer.byteLength(name) + Buffer.byteLength(suffix) <= NAME_MAX) {
    const [stem, ext] = splitExtension(name);
    return `${stem}${suffix}${ext}`;
  }
  let [stem, ext] = splitExtension(name);
  if (Buffer.byteLength(ext) > 32) {
    stem = name;
    ext = '';
  }
  return `${cutToBytes(stem, NAME_MAX - Buffer.byteLength(suffix) - Buffer.byteLength(ext))}${suffix}${ext}`;
}

/** The longest prefix of `s` of at most `room` UTF-8 bytes, cut between code points. */
function cutToBytes(s: string, room: number): string {
  let bytes = 0;
  let kept = '';
  for (const c of s) {
    const n = Buffer.byteLength(c);
    if (bytes + n > room) break;
    bytes += n;
    kept += c;
  }
  return kept;
}

/** The name of a duplicate (rule 3): `stem [ID8].ext`, with `idChars` characters of its id. */
export function duplicateName(base: string, driveId: string, isFolder: boolean, idChars = 8): string {
  const suffix = ` [${driveId.slice(0, idChars)}]`;
  if (isFolder) {
    // Folders have no extension: the suffix goes at the end.
    return `${cutToBytes(base, NAME_MAX - Buffer.byteLength(suffix))}${suffix}`;
  }
  return fitName(base, suffix);
}

/** The name a local version takes when Drive's changed too: `stem (conflict HOST DATE).ext`. */
export function conflictName(name: string, host: string, when: Date): string {
  const date = when.toISOString().slice(0, 19).replace('T', ' ').replace(/:/g, '');
  return fitName(name, ` (conflict ${host.replace(/\//g, '_')} ${date})`);
}
