/**
 * BIOS boot with GRUB for PC, offline: grub-mkimage builds a core.img holding every module
 * the boot needs (nothing of GRUB goes into the image's tree but /boot/grub/grub.cfg), and
 * this module does what grub-bios-setup would do, which cannot work on a disk file (it
 * probes the host's devices): boot.img into the MBR, pointed at core.img in the BIOS boot
 * partition. docs/disk.md has the byte offsets.
 */
import { mkdir, open, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

import { OsfarmError } from '../../base/errors.js';
import { type OutputContext, tool } from './context.js';
import type { BootFiles } from './kernel.js';
import { GRUB_I386_PC } from './tools.js';

const SECTOR = 512;

/** The GRUB configuration in the root file system (/boot/grub/grub.cfg) for BIOS boots. */
export function grubConfig(rootUuid: string, boot: BootFiles, cmdline: string, serial: boolean): string {
  return [
    '# written by osfarm: BIOS boot (GRUB for PC, core.img in the BIOS boot partition)',
    ...(serial ? ['serial --unit=0 --speed=115200', 'terminal_input serial console', 'terminal_output serial console'] : []),
    'set timeout=1',
    'set default=0',
    `menuentry "${boot.title.replace(/["\\$]/g, '')} (${boot.version})" {`,
    `  search --no-floppy --fs-uuid --set=root ${rootUuid}`,
    `  linux ${boot.kernel} ${cmdline}`,
    `  initrd ${boot.initrd}`,
    '}',
    '',
  ].join('\n');
}

/**
 * Writes GRUB's boot.img into the disk's MBR (keeping the partition table) and core.img at
 * `partitionOffset` (the BIOS boot partition, `partitionSize` bytes).
 */
export async function writeBiosBoot(disk: string, rootUuid: string, partitionOffset: number, partitionSize: number, ctx: OutputContext): Promise<void> {
  const dir = join(ctx.buildDir, 'grub');
  const early = join(dir, 'early.cfg');
  const core = join(dir, 'core.img');
  await mkdir(dir, { recursive: true });
  await writeFile(early, `search --no-floppy --fs-uuid --set=root ${rootUuid}\nset prefix=($root)/boot/grub\n`);
  await tool('BIOS boot: grub-mkimage', 'grub-mkimage', [
    '-O', 'i386-pc', '-d', GRUB_I386_PC, '-o', core, '-c', early, '-p', '/boot/grub',
    'biosdisk', 'part_gpt', 'ext2', 'search', 'search_fs_uuid', 'normal', 'configfile', 'linux', 'echo', 'test', 'serial', 'terminal', 'boot',
  ], ctx);
  const boot = Buffer.from(await readFile(join(GRUB_I386_PC, 'boot.img')));
  let img = Buffer.from(await readFile(core));
  img = Buffer.concat([img, Buffer.alloc((SECTOR - (img.length % SECTOR)) % SECTOR)]);
  if (boot.length !== SECTOR) throw new OsfarmError('OSFARM_BUILD_FAILED', `${GRUB_I386_PC}/boot.img is ${boot.length} bytes, not ${SECTOR}: reinstall grub-pc-bin`);
  if (img.length > partitionSize) throw new OsfarmError('OSFARM_BUILD_FAILED', `GRUB's core.img (${img.length} bytes) does not fit the BIOS boot partition (${partitionSize})`);
  const first = partitionOffset / SECTOR;
  // grub-bios-setup (grub-core/osdep/…/setup.c): boot.img learns where core.img starts, to
  // boot from the drive the BIOS booted (0xff), and skips its floppy check (a hard disk).
  boot.writeBigUInt64LE(BigInt(first), 0x5c); // GRUB_BOOT_MACHINE_KERNEL_SECTOR
  boot[0x64] = 0xff; // GRUB_BOOT_MACHINE_BOOT_DRIVE
  boot[0x66] = 0x90; // GRUB_BOOT_MACHINE_DRIVE_CHECK: the jump becomes two nops
  boot[0x67] = 0x90;
  // core.img's first sector (diskboot.img) ends with a block list of the rest: start sector
  // (u64), sector count (u16, grub-mkimage sets it), load segment (u16, 0x820).
  const list = SECTOR - 12;
  const count = img.readUInt16LE(list + 8);
  const segment = img.readUInt16LE(list + 10);
  if (count !== img.length / SECTOR - 1 || segment !== 0x820) {
    throw new OsfarmError('OSFARM_BUILD_FAILED', `GRUB's core.img has an unexpected block list (sectors ${count}, segment 0x${segment.toString(16)}): this GRUB version is not supported`);
  }
  img.writeBigUInt64LE(BigInt(first + 1), list);
  const f = await open(disk, 'r+');
  try {
    const mbr = Buffer.alloc(SECTOR);
    await f.read(mbr, 0, SECTOR, 0);
    // The boot code (bytes 0–0x1b7); the disk signature and partition table stay.
    boot.copy(mbr, 0, 0, 0x1b8);
    await f.write(mbr, 0, SECTOR, 0);
    await f.write(img, 0, img.length, partitionOffset);
  } finally {
    await f.close();
  }
}
