/** The copy-on-write methods ("backends" to users: btrfs, overlayfs, reflink, lvm-thin, copy) and how one is chosen for a store. */
import { OsfarmError } from '../../base/errors.js';
import { btrfs } from './btrfs.js';
import { copy, reflink } from './copy.js';
import { lvmThin } from './lvm.js';
import { overlayfs } from './overlayfs.js';
import { COW_NAMES, type CowMethod, type CowName, type ProbeResult } from './types.js';

export * from './types.js';

export const COW_METHODS: Record<CowName, CowMethod> = {
  btrfs,
  overlayfs,
  reflink,
  'lvm-thin': lvmThin,
  copy,
};

/** The backend called `name`; OSFARM_INVALID_ARGUMENT for an unknown name. */
export function cowMethod(name: string): CowMethod {
  if (!(COW_NAMES as readonly string[]).includes(name)) {
    throw new OsfarmError('OSFARM_INVALID_ARGUMENT', `unknown copy-on-write backend ${JSON.stringify(name)}: use auto, ${COW_NAMES.join(', ')}`);
  }
  return COW_METHODS[name as CowName];
}

export interface CowMethodReport extends ProbeResult {
  name: CowName;
}

/** Probes every backend for a store in `root`. */
export async function probeCowMethods(root: string): Promise<CowMethodReport[]> {
  const out: CowMethodReport[] = [];
  for (const name of COW_NAMES) out.push({ name, ...(await COW_METHODS[name].probe(root)) });
  return out;
}

/**
 * The backend for a store in `root`: the one asked for (an error saying what it needs if
 * it cannot work there), or with `auto` the first that works, in the order btrfs,
 * overlayfs, reflink, lvm-thin, copy.
 */
export async function selectCowMethod(root: string, requested: CowName | 'auto' = 'auto'): Promise<{ method: CowMethod; detail: string }> {
  if (requested !== 'auto') {
    const method = cowMethod(requested);
    const p = await method.probe(root);
    if (!p.available) throw new OsfarmError('OSFARM_STAGE', `the ${method.name} backend cannot work for the stage store in ${root}: ${p.detail}`);
    return { method, detail: p.detail };
  }
  for (const name of COW_NAMES) {
    const p = await COW_METHODS[name].probe(root);
    if (p.available) return { method: COW_METHODS[name], detail: p.detail };
  }
  // Not reached: copy always works.
  return { method: copy, detail: 'cp -a' };
}
