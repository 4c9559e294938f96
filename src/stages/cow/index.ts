/** The copy-on-write backends and how one is chosen for a store. */
import { OsfarmError } from '../../base/errors.js';
import { btrfs } from './btrfs.js';
import { copy, reflink } from './copy.js';
import { lvmThin } from './lvm.js';
import { overlayfs } from './overlayfs.js';
import { COW_NAMES, type CowBackend, type CowName, type ProbeResult } from './types.js';

export * from './types.js';

export const BACKENDS: Record<CowName, CowBackend> = {
  btrfs,
  overlayfs,
  reflink,
  'lvm-thin': lvmThin,
  copy,
};

/** The backend called `name`; OSFARM_INVALID_ARGUMENT for an unknown name. */
export function backendByName(name: string): CowBackend {
  if (!(COW_NAMES as readonly string[]).includes(name)) {
    throw new OsfarmError('OSFARM_INVALID_ARGUMENT', `unknown copy-on-write backend ${JSON.stringify(name)}: use auto, ${COW_NAMES.join(', ')}`);
  }
  return BACKENDS[name as CowName];
}

export interface BackendReport extends ProbeResult {
  name: CowName;
}

/** Probes every backend for a store in `root`. */
export async function probeBackends(root: string): Promise<BackendReport[]> {
  const out: BackendReport[] = [];
  for (const name of COW_NAMES) out.push({ name, ...(await BACKENDS[name].probe(root)) });
  return out;
}

/**
 * The backend for a store in `root`: the one asked for (an error saying what it needs if
 * it cannot work there), or with `auto` the first that works, in the order btrfs,
 * overlayfs, reflink, lvm-thin, copy.
 */
export async function selectBackend(root: string, requested: CowName | 'auto' = 'auto'): Promise<{ backend: CowBackend; detail: string }> {
  if (requested !== 'auto') {
    const backend = backendByName(requested);
    const p = await backend.probe(root);
    if (!p.available) throw new OsfarmError('OSFARM_STAGE', `the ${backend.name} backend cannot work for the stage store in ${root}: ${p.detail}`);
    return { backend, detail: p.detail };
  }
  for (const name of COW_NAMES) {
    const p = await BACKENDS[name].probe(root);
    if (p.available) return { backend: BACKENDS[name], detail: p.detail };
  }
  // Not reached: copy always works.
  return { backend: copy, detail: 'cp -a' };
}
