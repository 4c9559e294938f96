/**
 * The host tools each output format runs, with the Debian package that has each: a build
 * checks them all before it starts, and a missing one is named with its package.
 */
import { access, constants } from 'node:fs/promises';

import { buildFailed } from '../errors.js';
import { haveTool } from '../../host/process.js';
import type { Firmware, OutputFormat } from '../../spec/distros.js';

/** An executable (found on the system PATH) or a file, and the Debian package that ships it. */
interface Need {
  tool?: string;
  file?: string;
  package: string;
  why: string;
}

const E2FS: Need[] = ['mke2fs', 'debugfs', 'tune2fs', 'e2fsck'].map((tool) => ({ tool, package: 'e2fsprogs', why: 'the ext4 root file system' }));
/** Where GRUB for PC's boot sector and modules are (grub-mkimage builds core.img from them). */
export const GRUB_I386_PC = '/usr/lib/grub/i386-pc';

function needs(format: OutputFormat, firmware: Firmware): Need[] {
  switch (format) {
    case 'tar':
      return [];
    case 'tar.gz':
      return [{ tool: 'tar', package: 'tar', why: 'the tar.gz output' }];
    case 'ext4':
      return [...E2FS, { tool: 'getfattr', package: 'attr', why: "the stages' extended attributes" }];
    case 'squashfs':
      return [{ tool: 'mksquashfs', package: 'squashfs-tools', why: 'the squashfs output' }];
    case 'oci':
      return [
        { tool: 'tar', package: 'tar', why: 'the layers of the stages above the core' },
        { tool: 'getfattr', package: 'attr', why: "the stages' extended attributes" },
      ];
    case 'disk':
    case 'qcow2': {
      const out: Need[] = [
        ...needs('ext4', firmware),
        { tool: 'sfdisk', package: 'fdisk', why: 'the GPT partition table' },
        { tool: 'mkfs.fat', package: 'dosfstools', why: 'the EFI system partition' },
        { tool: 'mmd', package: 'mtools', why: 'the EFI system partition (written without mounting it)' },
        { tool: 'mcopy', package: 'mtools', why: 'the EFI system partition (written without mounting it)' },
      ];
      if (firmware !== 'uefi') {
        out.push({ tool: 'grub-mkimage', package: 'grub-common', why: 'BIOS boot (GRUB core.img)' });
        out.push({ file: `${GRUB_I386_PC}/boot.img`, package: 'grub-pc-bin', why: 'BIOS boot (GRUB for PC modules)' });
      }
      if (format === 'qcow2') out.push({ tool: 'qemu-img', package: 'qemu-utils', why: 'the qcow2 conversion' });
      return out;
    }
  }
}

/** Fails (OSFARM_BUILD_FAILED) naming every missing tool and its Debian package, before a build starts. */
export async function checkOutputTools(formats: readonly OutputFormat[], firmware: Firmware): Promise<void> {
  const missing = new Map<string, Need>();
  for (const f of formats) {
    for (const n of needs(f, firmware)) {
      const name = n.tool ?? n.file!;
      if (missing.has(name)) continue;
      const ok = n.tool ? await haveTool(n.tool) : await access(n.file!, constants.R_OK).then(() => true, () => false);
      if (!ok) missing.set(name, { ...n, why: `${n.why} (${f} output)` });
    }
  }
  if (missing.size === 0) return;
  const list = [...missing.entries()].map(([name, n]) => `${name} from the Debian package ${n.package}, for ${n.why}`);
  const packages = [...new Set([...missing.values()].map((n) => n.package))];
  throw buildFailed(`missing host tools: ${list.join('; ')}. Install them: apt-get install ${packages.join(' ')}`);
}
