/**
 * What qemu needs per guest architecture: the emulator and its Debian package, the machine
 * and CPU, and where the UEFI firmware lives. docs/boot.md has
 * the same table in prose.
 */
import { access, constants } from 'node:fs/promises';
import { join } from 'node:path';

import { invalidArgument, OsfarmError } from '../base/errors.js';
import { haveTool } from '../host/process.js';
import { type Architecture, hostArchitecture } from '../spec/distros.js';

export const FIRMWARES = ['uefi', 'bios'] as const;
/** How the guest is started: through UEFI or BIOS firmware, or its kernel given to qemu directly. */
export type Firmware = (typeof FIRMWARES)[number];
export type BootMode = Firmware | 'kernel';

export const ACCELS = ['auto', 'kvm', 'tcg'] as const;
export type Accel = (typeof ACCELS)[number];

/** UEFI firmware: a read-only code image and a template of its variable store, which must come in pairs. */
export interface UefiFirmware {
  /** [code, vars] file names, the preferred pair first. */
  pairs: [string, string][];
  dirs: string[];
  package: string;
}

export interface Machine {
  arch: Architecture;
  qemu: string;
  /** The Debian package holding `qemu`. */
  package: string;
  /** Machine type arguments (x86 uses qemu's default `pc`). */
  machine: string[];
  /** The CPU under TCG; undefined = qemu's default. Under KVM it is always `host`. */
  tcgCpu?: string;
  /** Boots through a PC BIOS (SeaBIOS, part of qemu-system-x86). */
  bios: boolean;
  uefi?: UefiFirmware;
  /** Host architectures whose KVM can run this guest. */
  kvmHosts: Architecture[];
}

export const MACHINES: Record<Architecture, Machine> = {
  amd64: {
    arch: 'amd64', qemu: 'qemu-system-x86_64', package: 'qemu-system-x86', machine: [], bios: true,
    uefi: { pairs: [['OVMF_CODE_4M.fd', 'OVMF_VARS_4M.fd'], ['OVMF_CODE.fd', 'OVMF_VARS.fd']], dirs: ['/usr/share/OVMF'], package: 'ovmf' },
    kvmHosts: ['amd64'],
  },
  i386: {
    arch: 'i386', qemu: 'qemu-system-i386', package: 'qemu-system-x86', machine: [], bios: true,
    kvmHosts: ['amd64'],
  },
  arm64: {
    arch: 'arm64', qemu: 'qemu-system-aarch64', package: 'qemu-system-arm', machine: ['-M', 'virt'], tcgCpu: 'cortex-a57', bios: false,
    uefi: { pairs: [['AAVMF_CODE.fd', 'AAVMF_VARS.fd']], dirs: ['/usr/share/AAVMF'], package: 'qemu-efi-aarch64' },
    kvmHosts: ['arm64'],
  },
  armhf: {
    arch: 'armhf', qemu: 'qemu-system-arm', package: 'qemu-system-arm', machine: ['-M', 'virt'], tcgCpu: 'cortex-a15', bios: false,
    uefi: { pairs: [['AAVMF32_CODE.fd', 'AAVMF32_VARS.fd']], dirs: ['/usr/share/AAVMF'], package: 'qemu-efi-arm' },
    kvmHosts: [],
  },
};

export function parseFirmware(value: string): Firmware {
  if (!(FIRMWARES as readonly string[]).includes(value)) throw invalidArgument(`unknown firmware ${JSON.stringify(value)}: give uefi or bios (or --kernel-boot to start the image's kernel directly)`);
  return value as Firmware;
}

export function parseAccel(value: string): Accel {
  if (!(ACCELS as readonly string[]).includes(value)) throw invalidArgument(`unknown accelerator ${JSON.stringify(value)}: give auto, kvm or tcg`);
  return value as Accel;
}

/** Fails with the Debian package to install when a tool is missing. */
export async function requireTool(tool: string, pkg: string, what: string): Promise<void> {
  if (!(await haveTool(tool))) throw new OsfarmError('OSFARM_BOOT_FAILED', `${what} needs ${tool}, which is not installed: apt-get install ${pkg}`);
}

async function readable(path: string): Promise<boolean> {
  try {
    await access(path, constants.R_OK);
    return true;
  } catch {
    return false;
  }
}

/** The UEFI code and variable-store template for a machine, searched in `dirs` (default: where Debian installs them). */
export async function findUefi(m: Machine, dirs?: string[]): Promise<{ code: string; vars: string }> {
  if (!m.uefi) throw new OsfarmError('OSFARM_BOOT_FAILED', `osfarm boot has no UEFI firmware for ${m.arch} guests: use --firmware bios or --kernel-boot`);
  const where = dirs ?? m.uefi.dirs;
  for (const dir of where) {
    for (const [code, vars] of m.uefi.pairs) {
      if ((await readable(join(dir, code))) && (await readable(join(dir, vars)))) return { code: join(dir, code), vars: join(dir, vars) };
    }
  }
  throw new OsfarmError(
    'OSFARM_BOOT_FAILED',
    `no UEFI firmware for ${m.arch} (${m.uefi.pairs.map((p) => p[0]).join(' or ')} with its VARS file) in ${where.join(', ')}: apt-get install ${m.uefi.package}, or boot with --firmware bios`,
  );
}

/** Why KVM cannot be tried for this guest here, or null if it can. */
export async function kvmUnavailable(m: Machine): Promise<string | null> {
  const host = hostArchitecture();
  if (!m.kvmHosts.includes(host)) return `a ${m.arch} guest on a ${host} host is emulated`;
  try {
    await access('/dev/kvm', constants.R_OK | constants.W_OK);
    return null;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'this host has no /dev/kvm' : 'this user may not use /dev/kvm';
  }
}
