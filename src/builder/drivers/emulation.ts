/** Foreign architectures: qemu-user-static through binfmt_misc, registered on demand. */
import { readFile } from 'node:fs/promises';

import { type Architecture, nativeArchitectures, QEMU_CPU } from '../../spec/distros.js';
import { buildFailed } from '../errors.js';
import { exists } from '../../host/fs.js';
import { run } from '../../host/process.js';

const BINFMT = '/proc/sys/fs/binfmt_misc';

/**
 * Makes sure binaries of `arch` run here: natively, or through qemu-user-static with a
 * binfmt_misc entry that has the F (fix binary) flag, so nothing has to be copied into the
 * chroot. Mounts binfmt_misc and enables the qemu entry (update-binfmts) if needed.
 */
export async function ensureEmulation(arch: Architecture, log: (l: string) => void): Promise<void> {
  if (nativeArchitectures().includes(arch)) return;
  const cpu = QEMU_CPU[arch];
  if (!(await exists(`${BINFMT}/status`))) {
    log(`osfarm: mounting binfmt_misc for ${arch} emulation`);
    await run('mount', ['-t', 'binfmt_misc', 'binfmt_misc', BINFMT], { onLine: log });
  }
  const entry = `${BINFMT}/qemu-${cpu}`;
  if (!(await exists(entry))) {
    log(`osfarm: enabling qemu-${cpu} in binfmt_misc (update-binfmts --enable qemu-${cpu})`);
    const r = await run('update-binfmts', ['--enable', `qemu-${cpu}`], { onLine: log });
    if (r.code !== 0 || !(await exists(entry))) {
      throw buildFailed(`cannot run ${arch} binaries here: install qemu-user-static and binfmt-support (qemu-${cpu} is not registered in binfmt_misc)`);
    }
  }
  const text = await readFile(entry, 'utf8');
  if (!/^enabled/m.test(text)) throw buildFailed(`binfmt_misc entry qemu-${cpu} is disabled: run update-binfmts --enable qemu-${cpu}`);
  if (!/^flags:.*F/m.test(text)) {
    throw buildFailed(`binfmt_misc entry qemu-${cpu} lacks the F (fix binary) flag; osfarm needs qemu-user-static's own registration`);
  }
}
