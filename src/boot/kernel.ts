/**
 * Direct kernel boot (`--kernel-boot`, the way the seed's Xen guests started): the image's
 * own kernel and initramfs, copied out of its root file system with debugfs, and the
 * command line of its boot entry, for qemu's -kernel, -initrd and -append.
 */
import { stat } from 'node:fs/promises';
import { join } from 'node:path';

import { OsfarmError } from '../base/errors.js';
import { haveTool, run, runChecked, SYSTEM_PATH } from '../host/process.js';
import { type DiskLayout, type DiskSource, extractRange, readRange } from './disk.js';
import { SERIAL_TTY } from '../spec/distros.js';
import type { Machine } from './machine.js';

export interface KernelBoot {
  version: string;
  kernel: string;
  initrd: string | null;
  cmdline: string;
  /** Where the command line came from: a boot entry's path, or `default`. */
  cmdlineFrom: string;
}

/** A debugfs request on a file system image (`path?offset=N` reads one inside a disk). */
async function debugfs(fs: string, request: string, signal?: AbortSignal): Promise<string> {
  return runChecked('reading the root file system', 'debugfs', ['-R', request, fs], { signal, errorCode: 'OSFARM_BOOT_FAILED' });
}

/** Entries of a directory (`ls -p`: /inode/mode/uid/gid/name/size/); empty if it does not exist. */
async function listDir(fs: string, dir: string, signal?: AbortSignal): Promise<{ name: string; mode: number }[]> {
  const out = await debugfs(fs, `ls -p "${dir}"`, signal);
  const entries: { name: string; mode: number }[] = [];
  for (const line of out.split('\n')) {
    const f = line.split('/');
    if (f.length >= 7 && f[5] !== '.' && f[5] !== '..') entries.push({ name: f[5]!, mode: parseInt(f[2]!, 8) });
  }
  return entries;
}

const isFile = (mode: number) => (mode & 0o170000) === 0o100000;

/** Sorts kernel versions as dpkg does for the usual shapes (6.1.0-57-amd64 < 6.1.0-58-amd64 < 6.10.0-1-amd64). */
function byVersion(a: string, b: string): number {
  return a.localeCompare(b, 'en', { numeric: true });
}

/** The ext file system's UUID, from its superblock. */
function extUuid(sb: Buffer): string {
  const h = sb.subarray(1024 + 0x68, 1024 + 0x78).toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** The `options` of the first Boot Loader Specification entry in `dir` of the root file system, if any. */
async function blsOptions(fs: string, dir: string, signal?: AbortSignal): Promise<string | undefined> {
  const entries = (await listDir(fs, dir, signal)).filter((e) => isFile(e.mode) && e.name.endsWith('.conf')).sort((a, b) => a.name.localeCompare(b.name));
  for (const e of entries) {
    const text = await debugfs(fs, `cat "${dir}/${e.name}"`, signal);
    const options = /^options\s+(.*)$/m.exec(text)?.[1]?.trim();
    if (options) return options;
  }
  return undefined;
}

/** The `options` of the EFI system partition's boot entry (systemd-boot's /loader/entries), read with mtools if it is installed. */
async function espOptions(src: DiskSource, layout: DiskLayout, scratch: string, signal?: AbortSignal): Promise<{ path: string; options: string } | undefined> {
  const esp = layout.esp;
  if (!esp || !(await haveTool('mtype'))) return undefined;
  let image = `${src.location}@@${esp.offset}`;
  if (src.kind !== 'file' || src.format !== 'raw') {
    image = join(scratch, 'esp.raw');
    await extractRange(src, esp.offset, esp.size, image, signal);
  }
  // MTOOLS_SKIP_CHECK: mtools refuses a FAT whose size disagrees with the partition's otherwise.
  const env = { PATH: SYSTEM_PATH, LC_ALL: 'C', MTOOLS_SKIP_CHECK: '1' };
  const dir = await run('mdir', ['-b', '-i', image, '::/loader/entries'], { capture: true, env, signal });
  if (dir.code !== 0) return undefined;
  for (const path of dir.stdout.split('\n').map((l) => l.trim()).filter((l) => /\.conf$/i.test(l)).sort()) {
    const file = path.replace(/^::/, '');
    const text = await run('mtype', ['-i', image, `::${file}`], { capture: true, env, signal });
    const options = /^options\s+(.*)$/m.exec(text.stdout)?.[1]?.trim();
    if (text.code === 0 && options) return { path: `ESP:${file}`, options };
  }
  return undefined;
}

/** An OSFARM error saying the image has no kernel, and how to give it one. */
export function noKernel(image: string, why: string): OsfarmError {
  return new OsfarmError(
    'OSFARM_BOOT_FAILED',
    `${image} has no kernel to boot (${why}): build it with a kernel — the spec's kernel field (e.g. kernel: linux-image-amd64) or its package in packages (linux-image-<arch> with initramfs-tools) — and a bootable output (disk or qcow2)`,
  );
}

/**
 * Copies the newest kernel and its initramfs out of the image's root file system into
 * `dir` (`scratch` takes copies of the disk's partitions when it is not a raw file), and
 * makes the command line: the boot entry's options (the root file system's
 * /boot/loader/entries, else the ESP's, else GRUB's grub.cfg), else `root=UUID=… ro`; the
 * machine's serial console is added when the entry names none, so the boot shows on it.
 */
export async function kernelBoot(image: string, src: DiskSource, layout: DiskLayout, m: Machine, dir: string, scratch: string, signal?: AbortSignal): Promise<KernelBoot> {
  const root = layout.root;
  if (!root) throw noKernel(image, 'it has no Linux root partition');
  // debugfs reads a raw file at an offset; other disks (qcow2, NBD) lend it a copy of the partition.
  const direct = src.kind === 'file' && src.format === 'raw';
  const fsFile = direct ? src.location : join(scratch, 'rootfs.raw');
  const fsOffset = direct ? root.offset : 0;
  if (!direct) await extractRange(src, root.offset, root.size, fsFile, signal);
  const fs = fsOffset === 0 ? fsFile : `${fsFile}?offset=${fsOffset}`;
  const sb = await readRange({ kind: 'file', location: fsFile, format: 'raw' }, fsOffset, 2048, scratch, signal);
  if (sb.length < 2048 || sb.readUInt16LE(1024 + 0x38) !== 0xef53) throw noKernel(image, 'its root partition holds no ext2/3/4 file system that osfarm can read');
  const boot = await listDir(fs, '/boot', signal);
  const versions = boot.filter((e) => isFile(e.mode) && e.name.startsWith('vmlinuz-')).map((e) => e.name.slice('vmlinuz-'.length)).sort(byVersion);
  const version = versions.at(-1);
  if (!version) throw noKernel(image, '/boot holds no vmlinuz-*');
  const initrdName = [`initrd.img-${version}`, `initramfs-${version}.img`].find((n) => boot.some((e) => e.name === n && isFile(e.mode)));
  const kernel = join(dir, `vmlinuz-${version}`);
  const initrd = initrdName ? join(dir, initrdName) : null;
  for (const [from, to] of [[`/boot/vmlinuz-${version}`, kernel], ...(initrdName ? [[`/boot/${initrdName}`, initrd!]] : [])] as [string, string][]) {
    await debugfs(fs, `dump "${from}" "${to}"`, signal);
    const size = await stat(to).then((s) => s.size, () => 0);
    if (size === 0) throw new OsfarmError('OSFARM_BOOT_FAILED', `could not copy ${from} out of ${image}'s root file system (debugfs wrote nothing)`);
  }
  let cmdline: string | undefined;
  let cmdlineFrom = 'default';
  const bls = await blsOptions(fs, '/boot/loader/entries', signal);
  if (bls) [cmdline, cmdlineFrom] = [bls, '/boot/loader/entries'];
  else {
    const esp = await espOptions(src, layout, scratch, signal);
    if (esp) [cmdline, cmdlineFrom] = [esp.options, esp.path];
  }
  cmdline ??= `root=UUID=${extUuid(sb)} ro`;
  if (!/(^|\s)root=/.test(cmdline)) cmdline = `root=UUID=${extUuid(sb)} ${cmdline}`;
  const tty = SERIAL_TTY[m.arch];
  if (!new RegExp(`(^|\\s)console=${tty}\\b`).test(cmdline)) cmdline = `${cmdline} console=${tty},115200`;
  return { version, kernel, initrd, cmdline, cmdlineFrom };
}
