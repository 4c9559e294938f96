/** The kernel and initramfs a disk boots, found in the image's tree, and its command line. */
import { lstat, readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';

import { OsfarmError } from '../../base/errors.js';
import { SERIAL_TTY } from '../../spec/distros.js';
import type { BuildSpec } from '../../spec/spec.js';

export interface BootFiles {
  /** The kernel release (`6.1.0-57-amd64`). */
  version: string;
  /** Paths inside the image (`/boot/vmlinuz-…`). */
  kernel: string;
  initrd: string;
  /** The distribution's name for boot menus (PRETTY_NAME of /etc/os-release). */
  title: string;
}

/** Compares kernel releases so that 6.1.0-10 sorts after 6.1.0-9. */
function versionOrder(a: string, b: string): number {
  return a.localeCompare(b, 'en', { numeric: true });
}

const isFile = (p: string) => lstat(p).then((s) => s.isFile() || s.isSymbolicLink(), () => false);

/**
 * The newest kernel in the tree's /boot (`vmlinuz-V`, Debian, Ubuntu and the RPM family)
 * with its initramfs (`initrd.img-V` from initramfs-tools, `initramfs-V.img` from dracut).
 */
export async function findBootFiles(tree: string, spec: BuildSpec): Promise<BootFiles> {
  const names = await readdir(join(tree, 'boot')).catch(() => [] as string[]);
  const versions = names.filter((n) => n.startsWith('vmlinuz-')).map((n) => n.slice('vmlinuz-'.length)).filter((v) => v !== '' && !v.includes('rescue')).sort(versionOrder);
  const version = versions[versions.length - 1];
  if (version === undefined) {
    throw new OsfarmError(
      'OSFARM_BUILD_FAILED',
      `the image has no kernel in /boot (no vmlinuz-*)${spec.kernel ? `: the package ${spec.kernel} installed none; name a kernel image package in kernel:` : ': set kernel: true in the spec (flag --kernel on)'}`,
    );
  }
  let initrd: string | undefined;
  for (const n of [`initrd.img-${version}`, `initramfs-${version}.img`]) if (await isFile(join(tree, 'boot', n))) initrd ??= `/boot/${n}`;
  if (!initrd) {
    throw new OsfarmError('OSFARM_BUILD_FAILED', `the image has the kernel /boot/vmlinuz-${version} but no initramfs for it (initrd.img-${version} or initramfs-${version}.img): install initramfs-tools (Debian, Ubuntu) or dracut (RPM family) in the stage with the kernel`);
  }
  const osRelease = await readFile(join(tree, 'etc/os-release'), 'utf8').catch(() => readFile(join(tree, 'usr/lib/os-release'), 'utf8').catch(() => ''));
  const pretty = /^PRETTY_NAME="?([^"\n]*)"?$/m.exec(osRelease)?.[1] ?? `${spec.distribution} ${spec.release}`;
  return { version, kernel: `/boot/vmlinuz-${version}`, initrd, title: pretty };
}

/** The kernel command line: the root by file system UUID, and the console on the serial port too when asked (the last console= is /dev/console). */
export function kernelCommandLine(rootUuid: string, spec: BuildSpec): string {
  const parts = [`root=UUID=${rootUuid}`, 'ro'];
  if (spec.serialConsole) parts.push('console=tty0', `console=${SERIAL_TTY[spec.architecture]},115200`);
  return parts.join(' ');
}
