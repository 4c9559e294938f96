/**
 * The disk a VM boots from, as qemu reads it: a raw or qcow2 file, or an NBD export (the
 * lazy boot of issue 11 serves the image over NBD). Reads its partition table (GPT or
 * MBR) to find the EFI system partition, the BIOS boot partition and the root file
 * system, and copies byte ranges out of it for debugfs and mtools, which read plain files only.
 */
import { open, stat } from 'node:fs/promises';
import { join } from 'node:path';

import { invalidArgument, OsfarmError } from '../base/errors.js';
import { runChecked } from '../host/process.js';
import type { Architecture } from '../spec/distros.js';

export type DiskFormat = 'raw' | 'qcow2';

export interface DiskSource {
  kind: 'file' | 'nbd';
  /** The file's path, or the NBD URI (`nbd+unix:///EXPORT?socket=PATH`). */
  location: string;
  format: DiskFormat;
}

export interface Partition {
  /** 1-based, as the kernel numbers them. */
  number: number;
  /** GPT: the type GUID in upper case; MBR: the type byte as two hex digits. */
  type: string;
  name: string;
  offset: number;
  size: number;
}

export interface DiskLayout {
  table: 'gpt' | 'mbr' | 'none';
  partitions: Partition[];
  esp?: Partition;
  biosBoot?: Partition;
  /** The root file system's byte range (the whole image for a bare file system), if one was found. */
  root?: { offset: number; size: number; partition?: Partition };
  /** The architecture the root partition's GPT type names (the Discoverable Partitions types). */
  rootArch?: Architecture;
  /** No partition table: an ext2/3/4 file system over the whole image (osfarm's `ext4` output). */
  bareFs: boolean;
  /** The MBR holds boot code (a BIOS can start something). */
  mbrBootCode: boolean;
}

const SECTOR = 512;
const EXT_MAGIC = 0xef53;
const ESP = 'C12A7328-F81F-11D2-BA4B-00A0C93EC93B';
const BIOS_BOOT = '21686148-6449-6E6F-744E-656564454649';
const LINUX_DATA = '0FC63DAF-8483-4772-8E79-3D69D8477DE4';
/** Root partition types of the Discoverable Partitions Specification. */
const ROOT_TYPES: Record<string, Architecture> = {
  '4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709': 'amd64',
  '44479540-F297-41B2-9AF7-D131D5F0458A': 'i386',
  'B921B045-1DF0-41C3-AF44-4C6F280D3FAE': 'arm64',
  '69DAD710-2CE4-4E3C-B16C-21A1D49ABED3': 'armhf',
};

/** Parses `nbd+unix:///EXPORT?socket=PATH` into its socket and export name. */
export function parseNbdUri(uri: string): { socket: string; exportName: string } {
  let url: URL;
  try {
    url = new URL(uri);
  } catch {
    throw invalidArgument(`${uri} is not an NBD URI like nbd+unix:///EXPORT?socket=PATH`);
  }
  const socket = url.searchParams.get('socket');
  if (url.protocol !== 'nbd+unix:' || !socket) throw invalidArgument(`${uri}: osfarm boot reads NBD exports over a unix socket only (nbd+unix:///EXPORT?socket=PATH)`);
  return { socket, exportName: decodeURIComponent(url.pathname.replace(/^\//, '')) };
}

/** Escapes a value for qemu's key=value option syntax (a comma is doubled). */
const q = (v: string | number) => String(v).replaceAll(',', ',,');

/** qemu block-node options reading the source's guest-visible bytes, each key under `prefix`. */
function nodeOptions(src: DiskSource, prefix: string): string[] {
  if (src.kind === 'nbd') {
    const { socket, exportName } = parseNbdUri(src.location);
    return [`${prefix}driver=nbd`, `${prefix}server.type=unix`, `${prefix}server.path=${q(socket)}`, `${prefix}export=${q(exportName)}`];
  }
  const file = [`driver=file`, `filename=${q(src.location)}`];
  if (src.format === 'raw') return file.map((o) => prefix + o);
  return [`${prefix}driver=qcow2`, ...file.map((o) => `${prefix}file.${o}`)];
}

/**
 * Copies bytes `offset`..`offset+size` of the disk into a sparse raw file `out` (qemu-img
 * skips zero ranges), for tools that read files only.
 */
export async function extractRange(src: DiskSource, offset: number, size: number, out: string, signal?: AbortSignal): Promise<void> {
  const opts = ['driver=raw', `offset=${offset}`, `size=${size}`, ...nodeOptions(src, 'file.')].join(',');
  await runChecked('copying part of the disk', 'qemu-img', ['convert', '-q', '-O', 'raw', '--image-opts', opts, out], { signal, errorCode: 'OSFARM_BOOT_FAILED' });
}

/** Reads bytes of the disk: straight from a raw file, else through a copy in `scratch`. */
export async function readRange(src: DiskSource, offset: number, length: number, scratch: string, signal?: AbortSignal): Promise<Buffer> {
  let path = src.location;
  let at = offset;
  if (src.kind !== 'file' || src.format !== 'raw') {
    path = join(scratch, 'range.raw');
    await extractRange(src, offset, length, path, signal);
    at = 0;
  }
  const fh = await open(path, 'r');
  try {
    const buf = Buffer.alloc(length);
    const { bytesRead } = await fh.read(buf, 0, length, at);
    return buf.subarray(0, bytesRead);
  } finally {
    await fh.close();
  }
}

/** Identifies an image file by its first bytes; fails for archives and file systems qemu cannot boot. */
export async function sniffFile(path: string): Promise<DiskFormat> {
  const fh = await open(path, 'r');
  const head = Buffer.alloc(512);
  try {
    await fh.read(head, 0, 512, 0);
  } finally {
    await fh.close();
  }
  if (head.subarray(0, 4).equals(Buffer.from([0x51, 0x46, 0x49, 0xfb]))) return 'qcow2';
  const not = (what: string) => new OsfarmError('OSFARM_INVALID_ARGUMENT', `${path} is ${what}, not a disk: osfarm boot starts disks (the disk and qcow2 outputs), or a file system holding a kernel with --kernel-boot`);
  if (head.toString('latin1', 257, 262) === 'ustar') throw not('a tar archive');
  if (head.toString('latin1', 0, 4) === 'hsqs') throw not('a squashfs file system');
  if (head[0] === 0x1f && head[1] === 0x8b) throw not('gzip-compressed');
  if ((await stat(path)).size < 64 * 1024) throw not('too small');
  return 'raw';
}

/** A GUID as text (its first three fields are little-endian on disk). */
function guid(b: Buffer): string {
  const hex = (s: Buffer) => s.toString('hex');
  const le = (s: Buffer) => hex(Buffer.from(s).reverse());
  return `${le(b.subarray(0, 4))}-${le(b.subarray(4, 6))}-${le(b.subarray(6, 8))}-${hex(b.subarray(8, 10))}-${hex(b.subarray(10, 16))}`.toUpperCase();
}

function isExt(buf: Buffer, at: number): boolean {
  return buf.length >= at + 1024 + 0x3a && buf.readUInt16LE(at + 1024 + 0x38) === EXT_MAGIC;
}

/** The disk's size as the guest sees it. */
export async function diskSize(src: DiskSource, signal?: AbortSignal): Promise<number> {
  if (src.kind === 'file' && src.format === 'raw') return (await stat(src.location)).size;
  const info = await runChecked('reading the disk size', 'qemu-img', ['info', '--output=json', '--image-opts', nodeOptions(src, '').join(',')], { signal, errorCode: 'OSFARM_BOOT_FAILED' });
  return Number((JSON.parse(info) as { 'virtual-size': number })['virtual-size']);
}

/** Reads the partition table (or sees a bare file system) from the disk's first 64 KiB. */
export async function readLayout(src: DiskSource, scratch: string, signal?: AbortSignal): Promise<DiskLayout> {
  const head = await readRange(src, 0, 64 * 1024, scratch, signal);
  const mbrBootCode = head.subarray(0, 440).some((x) => x !== 0);
  const layout: DiskLayout = { table: 'none', partitions: [], bareFs: false, mbrBootCode };
  if (head.length < 1024 || head.readUInt16LE(510) !== 0xaa55) {
    layout.bareFs = isExt(head, 0);
    if (layout.bareFs) layout.root = { offset: 0, size: await diskSize(src, signal) };
    return layout;
  }
  if (head.toString('latin1', SECTOR, SECTOR + 8) === 'EFI PART') {
    layout.table = 'gpt';
    const entriesLba = Number(head.readBigUInt64LE(SECTOR + 72));
    const count = head.readUInt32LE(SECTOR + 80);
    const entrySize = head.readUInt32LE(SECTOR + 84);
    const start = entriesLba * SECTOR;
    const entries = start + count * entrySize <= head.length ? head.subarray(start, start + count * entrySize) : await readRange(src, start, count * entrySize, scratch, signal);
    for (let i = 0; i < count; i++) {
      const e = entries.subarray(i * entrySize, (i + 1) * entrySize);
      if (e.length < 128 || e.subarray(0, 16).every((x) => x === 0)) continue;
      const first = Number(e.readBigUInt64LE(32));
      const last = Number(e.readBigUInt64LE(40));
      const name = e.toString('utf16le', 56, 128).replace(/\0.*$/s, '');
      layout.partitions.push({ number: i + 1, type: guid(e.subarray(0, 16)), name, offset: first * SECTOR, size: (last - first + 1) * SECTOR });
    }
    layout.esp = layout.partitions.find((p) => p.type === ESP);
    layout.biosBoot = layout.partitions.find((p) => p.type === BIOS_BOOT);
    const typed = layout.partitions.find((p) => ROOT_TYPES[p.type]);
    const linux = layout.partitions.filter((p) => p.type === LINUX_DATA);
    const root = typed ?? linux.find((p) => p.name === 'root') ?? linux[0];
    if (root) layout.root = { offset: root.offset, size: root.size, partition: root };
    if (typed) layout.rootArch = ROOT_TYPES[typed.type];
    return layout;
  }
  layout.table = 'mbr';
  for (let i = 0; i < 4; i++) {
    const e = head.subarray(446 + i * 16, 462 + i * 16);
    const type = e[4]!;
    if (type === 0) continue;
    layout.partitions.push({ number: i + 1, type: type.toString(16).padStart(2, '0'), name: '', offset: e.readUInt32LE(8) * SECTOR, size: e.readUInt32LE(12) * SECTOR });
  }
  layout.esp = layout.partitions.find((p) => p.type === 'ef');
  const root = layout.partitions.find((p) => p.type === '83');
  if (root) layout.root = { offset: root.offset, size: root.size, partition: root };
  return layout;
}
