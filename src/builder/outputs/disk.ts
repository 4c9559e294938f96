/**
 * The bootable disk (docs/disk.md): GPT; a BIOS boot partition with GRUB's core.img (hybrid
 * and BIOS); an EFI system partition with systemd-boot, a Boot Loader Specification entry
 * and copies of the kernel and initramfs (hybrid and UEFI); the ext4 root file system. All
 * written into the disk file at the partitions' offsets, without a mount, a loop device or
 * partition nodes. Every identifier comes from the spec digest, so with SOURCE_DATE_EPOCH
 * the disk is the same bytes on every build.
 */
import { open, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

import { aborted } from '../errors.js';
import { diskFirmware, type Firmware } from '../../spec/distros.js';
import { derivedUuid, type OutputContext, tool, treeOf } from './context.js';
import { writeBiosBoot, grubConfig } from './bios.js';
import { espBytes, writeEsp } from './esp.js';
import { findBootFiles, kernelCommandLine } from './kernel.js';
import { finishRoot, type RootFile } from './rootfs.js';

const MiB = 1 << 20;
const SECTOR = 512;

/** GPT partition type GUIDs (the Discoverable Partitions Specification's root types). */
const TYPE = {
  bios: '21686148-6449-6E6F-744E-656564454649',
  esp: 'C12A7328-F81F-11D2-BA4B-00A0C93EC93B',
  root: { amd64: '4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709', arm64: 'B921B045-1DF0-41C3-AF44-4C6F280D3FAE' } as Record<string, string>,
};

export interface Extent {
  offset: number;
  size: number;
}

export interface DiskLayout {
  firmware: Firmware;
  /** GRUB's core.img (hybrid and BIOS). */
  bios?: Extent;
  /** The EFI system partition (hybrid and UEFI). */
  esp?: Extent;
  root: Extent;
  /** The disk's size: the partitions, 1 MiB before them and 1 MiB after (the backup GPT). */
  size: number;
}

/** Where the partitions go: every one on a MiB boundary, in the order BIOS boot, ESP, root. */
export function diskLayout(firmware: Firmware, espSize: number, rootSize: number): DiskLayout {
  let at = MiB;
  const l: Partial<DiskLayout> = { firmware };
  if (firmware !== 'uefi') {
    l.bios = { offset: at, size: MiB };
    at += MiB;
  }
  if (firmware !== 'bios') {
    l.esp = { offset: at, size: espSize };
    at += espSize;
  }
  l.root = { offset: at, size: rootSize };
  return { ...(l as DiskLayout), size: at + rootSize + MiB };
}

/** The partition table, written by sfdisk into the disk file, with the disk's own GUIDs. */
async function writeGpt(disk: string, l: DiskLayout, ctx: OutputContext): Promise<void> {
  const id = (purpose: string) => derivedUuid(ctx.digest, purpose);
  const part = (e: Extent, type: string, purpose: string, name: string) => `start=${e.offset / SECTOR}, size=${e.size / SECTOR}, type=${type}, uuid=${id(purpose)}, name="${name}"`;
  const script = [
    'label: gpt',
    `label-id: ${id('disk guid')}`,
    'unit: sectors',
    'first-lba: 2048',
    `last-lba: ${l.size / SECTOR - 34}`,
    'sector-size: 512',
    '',
    ...(l.bios ? [part(l.bios, TYPE.bios, 'bios partition', 'bios')] : []),
    ...(l.esp ? [part(l.esp, TYPE.esp, 'esp partition', 'esp')] : []),
    part(l.root, TYPE.root[ctx.spec.architecture]!, 'root partition', 'root'),
    '',
  ].join('\n');
  const file = join(ctx.buildDir, 'gpt.sfdisk');
  await writeFile(file, script);
  await tool('GPT: sfdisk', 'sh', ['-c', 'exec sfdisk --quiet --no-reread --no-tell-kernel --wipe never "$1" < "$2"', 'sfdisk', disk, file], ctx);
}

/** Copies `from` into `to` at `offset`, writing only the 4 KiB blocks that are not all zero (the disk stays sparse). */
async function copyInto(from: string, to: string, offset: number, signal?: AbortSignal): Promise<void> {
  const src = await open(from, 'r');
  const dst = await open(to, 'r+');
  try {
    const chunk = Buffer.alloc(4 * MiB);
    const zero = Buffer.alloc(4096);
    for (let pos = 0; ; pos += chunk.length) {
      if (signal?.aborted) throw aborted(signal);
      const { bytesRead } = await src.read(chunk, 0, chunk.length, pos);
      if (bytesRead === 0) break;
      // Runs of non-zero blocks, each written at once.
      let runStart = -1;
      for (let b = 0; b <= bytesRead; b += 4096) {
        const data = b < bytesRead && !chunk.subarray(b, Math.min(b + 4096, bytesRead)).equals(zero.subarray(0, Math.min(4096, bytesRead - b)));
        if (data && runStart < 0) runStart = b;
        if (!data && runStart >= 0) {
          await dst.write(chunk, runStart, b - runStart, offset + pos + runStart);
          runStart = -1;
        }
      }
      if (bytesRead < chunk.length) break;
    }
  } finally {
    await src.close();
    await dst.close();
  }
}

/** Writes the bootable raw disk of the image to `path`, its root file system from `populated` (rootfs.ts). */
export async function writeDisk(path: string, populated: string, ctx: OutputContext): Promise<DiskLayout> {
  const tree = treeOf(ctx);
  const firmware = diskFirmware(ctx.spec.firmware, ctx.spec.architecture);
  const boot = await findBootFiles(tree, ctx.spec);
  const rootUuid = derivedUuid(ctx.digest, 'ext4 uuid');
  const cmdline = kernelCommandLine(rootUuid, ctx.spec);
  const kernelBytes = (await stat(join(tree, boot.kernel))).size + (await stat(join(tree, boot.initrd))).size;
  const l = diskLayout(firmware, espBytes(kernelBytes), (await stat(populated)).size);
  ctx.log(`osfarm: disk: ${firmware}, kernel ${boot.version}${l.esp ? `, ESP ${l.esp.size / MiB} MiB` : ''}, root ${l.root.size / MiB} MiB, root UUID ${rootUuid}`);

  const times: string[] = [];
  let t0 = Date.now();
  const step = (what: string) => {
    times.push(`${what} ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    t0 = Date.now();
  };
  await rm(path, { force: true });
  const f = await open(path, 'w');
  await f.truncate(l.size);
  await f.close();
  await writeGpt(path, l, ctx);
  step('GPT');

  // The root: the populated file system, then what differs per disk (the same writes on every
  // disk, so disks of one chain keep sharing blocks): fstab and grub.cfg by UUID.
  const files: RootFile[] = [{ path: '/etc/fstab', content: `# written by osfarm: the root file system by its UUID\nUUID=${rootUuid}\t/\text4\tdefaults,errors=remount-ro\t0\t1\n` }];
  if (l.bios) files.push({ path: '/boot/grub/grub.cfg', content: grubConfig(rootUuid, boot, cmdline, ctx.spec.serialConsole) });
  await copyInto(populated, path, l.root.offset, ctx.signal);
  step('root copied');
  await finishRoot(path, l.root.offset, ctx, { uuid: rootUuid, label: 'root', files });
  step('root finished');

  if (l.esp) {
    const volumeId = derivedUuid(ctx.digest, 'fat volume id').replace(/-/g, '').slice(0, 8);
    await writeEsp(path, { offset: l.esp.offset, size: l.esp.size, volumeId, boot, cmdline }, ctx);
    step('ESP');
  }
  if (l.bios) {
    await writeBiosBoot(path, rootUuid, l.bios.offset, l.bios.size, ctx);
    step('GRUB');
  }
  ctx.log(`osfarm: disk: ${times.join(', ')}`);
  return l;
}
