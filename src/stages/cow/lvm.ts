/**
 * LVM thin snapshots (what the 2009 OSFarm used): detection only. Where device-mapper and
 * the thin-pool target exist, osfarm still says the backend is not implemented rather
 * than pretending; here (no device-mapper in the kernel) it says exactly what is missing.
 */
import { existsSync } from 'node:fs';

import { OsfarmError } from '../../base/errors.js';
import { run } from '../../host/process.js';
import { miscDevices } from '../../host/procs.js';
import type { CowMethod, ProbeResult, View, Workspace } from './types.js';

async function probeLvm(): Promise<ProbeResult> {
  const need = 'LVM thin snapshots need device-mapper with the thin-pool target and an LVM thin pool';
  if (!miscDevices().includes('device-mapper') || !existsSync('/dev/mapper/control')) {
    return {
      available: false,
      detail: `unavailable here: this kernel has no device-mapper (${!existsSync('/dev/mapper/control') ? 'no /dev/mapper/control' : 'no device-mapper in /proc/misc: dm-mod is not loaded, or this container cannot reach it'}); ${need}`,
    };
  }
  const targets = await run('dmsetup', ['targets'], { capture: true }).catch(() => null);
  if (targets?.code !== 0) {
    const why = targets ? (targets.stderr.split('\n').find((l) => /fail/i.test(l)) ?? targets.stderr.split('\n')[0] ?? '').trim() : 'dmsetup (package dmsetup) is not installed';
    return { available: false, detail: `unavailable here: device-mapper does not answer (dmsetup targets: ${why}); ${need}` };
  }
  if (!/^thin-pool\b/m.test(targets.stdout)) {
    return { available: false, detail: 'unavailable here: device-mapper has no thin-pool target (modprobe dm-thin-pool)' };
  }
  return {
    available: false,
    detail: 'device-mapper with thin-pool is present, but osfarm has no LVM thin backend yet: use btrfs, overlayfs or reflink',
  };
}

async function refuse(): Promise<never> {
  const p = await probeLvm();
  throw new OsfarmError('OSFARM_STAGE', `the lvm-thin backend cannot be used: ${p.detail}`);
}

export const lvmThin: CowMethod = {
  name: 'lvm-thin',
  layered: false,
  sharesData: true,
  probe: () => probeLvm(),
  snapshot: (): Promise<Workspace> => refuse(),
  view: (): Promise<View> => refuse(),
  checkout: (): Promise<Workspace> => refuse(),
};
