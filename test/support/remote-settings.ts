import type { RemoteSettings } from '../../src/remote/open-remote';

/** What a Drive client needs to find an emulator (in this process or a child). */
export interface EmulatorUrls {
  rootUrl: string;
  tokenUrl: string;
  authUrl: string;
}

const MiB = 1024 * 1024;

/** Remote settings pointing at an emulator: fast retries, so faults cost little time, and small chunks, so big uploads take several. */
export function emulatorSettings(emu: EmulatorUrls, credentialsPath: string, extra: Partial<RemoteSettings> = {}): Partial<RemoteSettings> {
  return {
    driveRootUrl: emu.rootUrl,
    tokenUrl: emu.tokenUrl,
    authUrl: emu.authUrl,
    credentialsPath,
    minCallSpacingMs: 0,
    retryBaseMs: 2,
    retryMaxMs: 40,
    maxAttempts: 12,
    uploadChunkBytes: MiB,
    multipartMaxBytes: 512 * 1024,
    ...extra,
  };
}
