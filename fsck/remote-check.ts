import { BlockFetcher } from '../src/cache/block-fetcher';
import type { Remote } from '../src/remote/remote';
import { StoreRepair, damagedHashes } from '../src/store/repair';
import { hashOf, type CheckState } from './checker';
import type { FindingSet } from './report';

/**
 * fsck with the remote: the pack index against the remote's listing (`--remote`), and,
 * with `--repair`, blocks lost or damaged locally fetched back from their packs.
 */

/** Compares the packs the metadata knows with the remote's listing; adds missing-pack and orphan-pack findings. */
export async function checkPacks(state: CheckState, remote: Remote): Promise<{ missingPacks: number[]; orphanNames: string[] }> {
  const { meta, store } = state.volume;
  const bs = state.blockSize;
  const { missing, orphanNames } = await comparePackListing(state.findings, remote, meta.remote.packs(), (pack) => {
    // Blocks whose only copy was this pack: still local (they go up again), or lost.
    const entries = meta.remote.entriesOf(pack.id).filter((e) => (state.rows.get(e.hash.toString('latin1')) ?? 0) > 0);
    const lost = entries.filter((e) => !store.has(e.hash));
    const hurt = new Set<string>();
    for (const e of lost) for (const r of meta.blockRowsOf(e.hash)) hurt.add(`${state.paths.of(r.ino)} bytes ${r.idx * bs}-${r.idx * bs + r.len - 1}`);
    return Promise.resolve(
      `${entries.length} live blocks, ${entries.length - lost.length} still local, ` +
        `${lost.length} lost${hurt.size > 0 ? `: ${[...hurt].slice(0, 50).join(', ')}${hurt.size > 50 ? `, and ${hurt.size - 50} more` : ''}` : ''}`,
    );
  });
  return { missingPacks: missing.map((p) => p.id), orphanNames };
}

/**
 * The packs an index names against the remote's listing: a missing-pack finding per pack
 * the remote lacks (`describe` says what that loses), an orphan-pack per pack it does not name.
 */
export async function comparePackListing<P extends { id: number; name: string; size: number }>(
  findings: FindingSet,
  remote: Remote,
  packs: readonly P[],
  describe: (pack: P) => Promise<string>,
): Promise<{ missing: P[]; orphanNames: string[] }> {
  const listed = new Map((await remote.list('pack')).map((p) => [p.name, p]));
  const missing: P[] = [];
  for (const pack of packs) {
    if (listed.has(pack.name)) continue;
    missing.push(pack);
    findings.add('missing-pack', `pack ${pack.name} (${pack.size} bytes) is not on ${remote.description}: ${await describe(pack)}`, pack.size);
  }
  const known = new Set(packs.map((p) => p.name));
  const orphanNames: string[] = [];
  for (const [name, p] of listed) {
    if (known.has(name)) continue;
    orphanNames.push(name);
    findings.add('orphan-pack', `pack ${name} (${p.size} bytes) on ${remote.description} is not in the index`, p.size);
  }
  return { missing, orphanNames };
}

/**
 * After the local repair: packs missing from the remote are forgotten (their blocks still
 * held locally become dirty again and are uploaded at the next mount; the others are lost
 * and recorded as damaged), orphan packs are deleted, and blocks recorded as damaged that
 * a pack still holds are fetched back (verified against their keys).
 */
export async function repairFromRemote(state: CheckState, remote: Remote, packs: { missingPacks: number[]; orphanNames: string[] } | undefined): Promise<void> {
  const { meta, store, ledger } = state.volume;
  const repair = new StoreRepair(store);
  const findings = state.findings;
  if (packs && packs.missingPacks.length > 0) {
    const local: Buffer[] = [];
    const lost: Buffer[] = [];
    for (const id of packs.missingPacks) {
      for (const e of meta.remote.entriesOf(id)) (store.has(e.hash) ? local : lost).push(e.hash);
    }
    meta.durableTransaction(() => {
      for (const id of packs.missingPacks) {
        meta.remote.deleteEntries(meta.remote.entriesOf(id).map((e) => e.hash));
        meta.remote.deletePack(id);
      }
    });
    await ledger.markDirtyAgain(local);
    await repair.run((txn) => {
      for (const h of lost) if ((state.rows.get(h.toString('latin1')) ?? 0) > 0) repair.markDamaged(txn, h);
    });
    findings.setRepaired('missing-pack', findings.count('missing-pack'), `forgot the packs; ${local.length} blocks still local go up again at the next mount, ${lost.length} lost blocks read as EIO`);
  }
  if (packs && packs.orphanNames.length > 0) {
    for (const name of packs.orphanNames) {
      const found = (await remote.list('pack')).find((p) => p.name === name);
      if (found) await remote.delete(found);
    }
    findings.setRepaired('orphan-pack', findings.count('orphan-pack'), 'deleted from the remote');
  }
  // Damaged blocks a pack holds: fetched back and verified.
  const damaged = damagedHashes(store).filter((h) => meta.remote.has(h));
  if (damaged.length === 0) return;
  const fetcher = new BlockFetcher(store, meta.remote, remote, {
    maxRangeBytes: 16 << 20,
    maxGapBytes: 1 << 20,
    concurrency: 4,
    log: { error: () => undefined, warn: () => undefined },
  });
  const outcomes = fetcher.fetch(damaged);
  const restored: Buffer[] = [];
  for (const [k, p] of outcomes) if ((await p) === 'ok') restored.push(hashOf(k));
  await repair.run((txn) => {
    for (const h of restored) repair.clearDamaged(txn, h);
  });
  const total = findings.count('missing-block') + findings.count('corrupt-block');
  if (restored.length > 0) {
    for (const kind of ['corrupt-block', 'missing-block'] as const) {
      const f = findings.list().find((x) => x.kind === kind);
      if (f) f.action = `${f.action ?? ''}; ${restored.length} of the ${total} damaged blocks were fetched back from their packs and read normally again`;
    }
    for (const kind of ['corrupt-superchunk'] as const) {
      const f = findings.list().find((x) => x.kind === kind);
      if (f) f.action = `${f.action ?? ''}; the blocks inside were fetched back from their packs where the remote has them`;
    }
  }
}
