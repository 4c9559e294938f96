/**
 * The EFI system partition, written into the disk file without mounting it (these hosts
 * may have no vfat): mkfs.fat at the partition's offset, then mtools. FAT16 with 4 KiB
 * clusters and an aligned data area, so the kernel and initramfs copied there are the same
 * 4 KiB blocks as in the root file system and cost nothing in a transfer. systemd-boot
 * (the tree's own systemd-boot-efi, else the host's) boots a Boot Loader Specification
 * entry at once (timeout 0).
 */
import { access, constants, copyFile, mkdir, stat, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

import { OsfarmError } from '../../base/errors.js';
import type { Architecture } from '../../spec/distros.js';
import { type OutputContext, tool, treeOf } from './context.js';
import type { BootFiles } from './kernel.js';

/** systemd-boot's file name and the removable-media path UEFI firmware boots, per architecture. */
const EFI: Partial<Record<Architecture, { sdboot: string; fallback: string }>> = {
  amd64: { sdboot: 'systemd-bootx64.efi', fallback: 'BOOTX64.EFI' },
  arm64: { sdboot: 'systemd-bootaa64.efi', fallback: 'BOOTAA64.EFI' },
};

const SDBOOT_DIR = '/usr/lib/systemd/boot/efi';

/** systemd-boot for the image's architecture: the tree's (the distribution's own, installed with the kernel), else the host's. */
async function systemdBoot(ctx: OutputContext): Promise<string> {
  const efi = EFI[ctx.spec.architecture]!;
  for (const p of [join(treeOf(ctx), SDBOOT_DIR, efi.sdboot), join(SDBOOT_DIR, efi.sdboot)]) {
    if (await access(p, constants.R_OK).then(() => true, () => false)) return p;
  }
  throw new OsfarmError(
    'OSFARM_BUILD_FAILED',
    `UEFI boot needs ${efi.sdboot}: neither the image nor this host has ${SDBOOT_DIR}/${efi.sdboot}; add the package systemd-boot-efi to the image's packages${ctx.spec.architecture === 'amd64' ? ', or install it on this host (apt-get install systemd-boot-efi)' : ''}`,
  );
}

/** Bytes the ESP gets: room for two kernels and initramfs (an upgrade) and the boot loader, in 64 MiB steps, at least 64 MiB. */
export function espBytes(kernelAndInitrd: number): number {
  const step = 64 << 20;
  return Math.max(step, Math.ceil((2 * kernelAndInitrd + (8 << 20)) / step) * step);
}

export interface EspOptions {
  /** Byte offset of the partition in the disk file, and its size. */
  offset: number;
  size: number;
  /** The FAT volume id (8 hex digits), from the disk's seed. */
  volumeId: string;
  boot: BootFiles;
  cmdline: string;
}

export async function writeEsp(disk: string, opts: EspOptions, ctx: OutputContext): Promise<void> {
  const sector = 512;
  const start = opts.offset / sector;
  // --invariant before -i: the later option wins for the volume id. -h: the hidden sectors
  // before the partition (its start on the disk). Data area aligned (mkfs.fat's default).
  // (It warns that the disk file is bigger than the file system: harmless.)
  await tool('ESP: mkfs.fat', 'mkfs.fat', ['-F', '16', '-s', '8', '-S', String(sector), '-h', String(start), '--invariant', '-i', opts.volumeId, '-n', 'ESP', '--offset', String(start), disk, String(opts.size / 1024)], ctx);
  const at = `${disk}@@${opts.offset}`;
  const efi = EFI[ctx.spec.architecture]!;
  const dir = `/osfarm/${opts.boot.version}`;
  await tool('ESP: mmd', 'mmd', ['-i', at, '::/EFI', '::/EFI/BOOT', '::/EFI/systemd', '::/loader', '::/loader/entries', '::/osfarm', `::${dir}`], ctx);
  const local = join(ctx.buildDir, 'esp');
  await mkdir(local, { recursive: true });
  const files: Record<string, string> = {
    'loader.conf': 'default osfarm.conf\ntimeout 0\neditor no\nconsole-mode keep\n',
    'osfarm.conf': `title ${opts.boot.title} (${opts.boot.version})\nlinux ${dir}/vmlinuz\ninitrd ${dir}/initrd.img\noptions ${opts.cmdline}\n`,
  };
  for (const [n, text] of Object.entries(files)) {
    await writeFile(join(local, n), text);
    if (ctx.sourceDateEpoch !== null) await utimes(join(local, n), ctx.sourceDateEpoch, ctx.sourceDateEpoch);
  }
  const tree = treeOf(ctx);
  // systemd-boot may be the host's: its time clamped like the tree's.
  const source = await systemdBoot(ctx);
  const sdboot = join(local, efi.sdboot);
  await copyFile(source, sdboot);
  const m = Math.min(Math.floor((await stat(source)).mtimeMs / 1000), ctx.sourceDateEpoch ?? Infinity);
  await utimes(sdboot, m, m);
  // mcopy -m keeps the files' modification times (the tree's, clamped); the big files first,
  // so they are contiguous and in cluster order.
  const copies: Array<[string, string]> = [
    [join(tree, opts.boot.kernel), `${dir}/vmlinuz`],
    [join(tree, opts.boot.initrd), `${dir}/initrd.img`],
    [sdboot, `/EFI/BOOT/${efi.fallback}`],
    [sdboot, `/EFI/systemd/${efi.sdboot}`],
    [join(local, 'loader.conf'), '/loader/loader.conf'],
    [join(local, 'osfarm.conf'), '/loader/entries/osfarm.conf'],
  ];
  for (const [from, to] of copies) await tool(`ESP: copying ${to}`, 'mcopy', ['-m', '-i', at, from, `::${to}`], ctx);
}
