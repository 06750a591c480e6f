// The errno-carrying error is defined with the metadata engine (the lowest layer that
// answers with errnos); the vfs and the FUSE adapter use it from here as before.
export { E, FsError, fail } from '../meta/errno';
