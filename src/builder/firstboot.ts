/**
 * What makes a stage's tree boot and configure itself (docs/disk.md, "The tree"):
 *
 *  - before the kernel package is installed, the initramfs configuration for virtual
 *    machines (initramfs-tools: MODULES=list with the VM block drivers, zstd; dracut:
 *    no host-only image): MODULES=dep cannot work in a chroot (it looks at the host's root
 *    device), MODULES=most makes a 30 MB initramfs twice per install;
 *  - the packages the spec's boot settings need, installed by the first stage that sets them;
 *  - in the configure phase: DHCP with systemd-networkd, users and their SSH keys, SSH host
 *    keys made at first boot (never shipped), a cloud-init seed, a marker line on the
 *    console once multi-user.target is reached, and no interactive first-boot wizard.
 *
 * The serial console and the root by UUID are on the kernel command line, which the disk
 * writer makes (outputs/disk.ts): nothing in the tree depends on the disk.
 */
import { chmod, chown, mkdir, readdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

import type { Chroot } from './chroot.js';
import { resolveInRoot } from './chroot.js';
import { buildFailed } from './errors.js';
import { exists } from '../host/fs.js';
import { BOOT_MARKER, familyOf, type Family } from '../spec/distros.js';
import type { BuildSpec } from '../spec/spec.js';

/** Block and file system drivers virtual machines boot from (qemu/KVM, Xen, Hyper-V, the clouds' NVMe). */
const VM_MODULES: Record<string, string[]> = {
  amd64: ['virtio_pci', 'virtio_blk', 'virtio_scsi', 'sd_mod', 'sr_mod', 'ahci', 'ata_piix', 'nvme', 'xen_blkfront', 'hv_storvsc', 'ext4'],
  arm64: ['virtio_pci', 'virtio_mmio', 'virtio_blk', 'virtio_scsi', 'sd_mod', 'nvme', 'ext4'],
};

/** Debian releases whose systemd-boot EFI binaries are not in a package of their own. */
const NO_SYSTEMD_BOOT_EFI = ['stretch', 'buster', 'bullseye'];

const hasSshKeys = (s: BuildSpec | undefined): boolean => !!s && (s.users.some((u) => u.sshKeys.length > 0) || hasSshKeys(s.parent));

/** The packages this stage installs for its boot settings: those its parent's settings did not bring already. */
export function bootPackages(spec: BuildSpec): string[] {
  const p = spec.parent;
  const deb = familyOf(spec.distribution) === 'deb';
  const out: string[] = [];
  if (spec.kernel && spec.kernel !== p?.kernel) {
    if (deb) {
      out.push(spec.kernel, 'initramfs-tools', 'zstd', 'systemd-sysv', 'udev');
      // The distribution's systemd-boot for the ESP (the only one there is for a foreign architecture).
      if (spec.distribution === 'debian' && !NO_SYSTEMD_BOOT_EFI.includes(spec.release)) out.push('systemd-boot-efi');
    } else out.push(spec.kernel, 'dracut', 'systemd', 'systemd-udev');
  }
  if (spec.network === 'dhcp' && p?.network !== 'dhcp') out.push(deb ? 'systemd-sysv' : 'NetworkManager');
  if (hasSshKeys(spec) && !hasSshKeys(p)) out.push('openssh-server');
  if (spec.cloudInit !== 'none' && (p?.cloudInit ?? 'none') === 'none') out.push('cloud-init');
  return [...new Set(out)];
}

async function writeIn(root: string, path: string, content: string, mode = 0o644): Promise<void> {
  const target = await resolveInRoot(root, path);
  // Unchanged content is not rewritten: the stage's delta stays empty for it.
  if ((await readFile(target, 'utf8').catch(() => undefined)) === content) return;
  await mkdir(join(target, '..'), { recursive: true, mode: 0o755 });
  await writeFile(target, content, { mode });
  await chmod(target, mode);
  await chown(target, 0, 0);
}

/**
 * Writes the initramfs configuration a VM image needs into the tree before its kernel is
 * installed (the package's install builds the initramfs with it).
 */
export async function prepareKernelInstall(root: string, spec: BuildSpec, log: (l: string) => void): Promise<void> {
  if (!spec.kernel || spec.kernel === spec.parent?.kernel) return;
  const modules = VM_MODULES[spec.architecture] ?? VM_MODULES.amd64!;
  if (familyOf(spec.distribution) === 'deb') {
    await writeIn(root, '/etc/initramfs-tools/conf.d/osfarm.conf', '# written by osfarm: an initramfs for virtual machines, built in a chroot\nMODULES=list\nCOMPRESS=zstd\nRESUME=none\n');
    // Not /etc/initramfs-tools/modules: that is the package's conffile.
    await writeIn(root, '/usr/share/initramfs-tools/modules.d/osfarm', `# written by osfarm: block and file system drivers of virtual machines\n${modules.join('\n')}\n`);
  } else {
    await writeIn(root, '/etc/dracut.conf.d/osfarm.conf', `# written by osfarm: an initramfs for virtual machines, built in a chroot\nhostonly="no"\nadd_drivers+=" ${modules.join(' ')} "\n`);
  }
  log(`osfarm: kernel ${spec.kernel}: initramfs configured for virtual machines (${modules.length} drivers)`);
}

/**
 * After the packages: an RPM kernel's scriptlets may not have made an initramfs inside
 * dnf --installroot; make it with dracut in the chroot. Debian's initramfs-tools always does.
 */
export async function finishKernelInstall(spec: BuildSpec, chroot: Chroot, opts: { signal?: AbortSignal; log: (l: string) => void }): Promise<void> {
  if (!spec.kernel || spec.kernel === spec.parent?.kernel || familyOf(spec.distribution) === 'deb') return;
  const code = await chroot.sh(
    'for m in /lib/modules/*/; do v=$(basename "$m"); [ -e "/lib/modules/$v/vmlinuz" ] && [ ! -e "/boot/vmlinuz-$v" ] && cp "/lib/modules/$v/vmlinuz" "/boot/vmlinuz-$v"; [ -e "/boot/initramfs-$v.img" ] || dracut --no-hostonly --force --kver "$v" "/boot/initramfs-$v.img"; done\n',
    { signal: opts.signal, onLine: opts.log },
  );
  if (code !== 0) throw buildFailed(`making the initramfs of ${spec.kernel} with dracut failed (exit ${code}); see the build log`);
}

/** Whether a stage's configure phase needs a chroot session for the first-boot settings (useradd, systemctl). */
export function firstBootNeedsChroot(spec: BuildSpec): boolean {
  return spec.kernel !== null || spec.network === 'dhcp' || spec.users.length > 0 || spec.cloudInit !== 'none';
}

const MARKER_UNIT = `[Unit]
Description=osfarm boot marker on the console (multi-user.target is reached)
After=multi-user.target

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'echo "${BOOT_MARKER} host=$(hostname)" > /dev/console'

[Install]
WantedBy=multi-user.target
`;

const HOSTKEYS_UNIT = `[Unit]
Description=SSH host keys, made at first boot (an image never ships them)
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
RequiredBy=ssh.service
`;

/** The first-boot settings of a stage, in the configure phase (the chroot is entered). */
export async function configureFirstBoot(root: string, spec: BuildSpec, family: Family, chroot: Chroot, opts: { signal?: AbortSignal; log: (l: string) => void; env: Record<string, string> }): Promise<void> {
  const sh = async (what: string, script: string) => {
    const code = await chroot.sh(script, { signal: opts.signal, onLine: opts.log, env: opts.env });
    if (code !== 0) throw buildFailed(`${what} failed (exit ${code}); see the build log`);
  };
  const systemd = await exists(await resolveInRoot(root, '/usr/bin/systemctl'));
  const enable: string[] = [];
  if (spec.kernel !== null) {
    if (!systemd) throw buildFailed(`the image boots ${spec.kernel} but has no systemd (systemctl): add systemd-sysv to its packages`);
    await writeIn(root, '/etc/systemd/system/osfarm-boot-marker.service', MARKER_UNIT);
    enable.push('osfarm-boot-marker.service');
  }
  if (spec.network === 'dhcp' && family === 'deb') {
    if (!systemd) throw buildFailed('network: dhcp configures systemd-networkd, and the image has no systemd: add systemd-sysv to its packages');
    await writeIn(root, '/etc/systemd/network/80-osfarm-dhcp.network', '# written by osfarm: DHCP on the Ethernet NICs\n[Match]\nName=en* eth*\n\n[Network]\nDHCP=yes\n');
    enable.push('systemd-networkd.service');
  }
  // (RPM family: NetworkManager, installed for network: dhcp, configures wired NICs by DHCP itself.)
  for (const u of spec.users) await addUser(root, u.name, u.sshKeys, sh);
  if (spec.users.length > 0) opts.log(`osfarm: configure: users ${spec.users.map((u) => `${u.name} (${u.sshKeys.length} SSH key(s))`).join(', ')}`);
  if (spec.cloudInit !== 'none') await cloudInit(root, spec);
  if (systemd && enable.length > 0) await sh('enabling the first-boot units', `systemctl enable ${enable.join(' ')}\n`);
  // Everything is configured at build time: no prompt for a locale or root password on the console.
  if (systemd && spec.kernel !== null) await sh('masking systemd-firstboot', 'systemctl mask systemd-firstboot.service\n');
}

/** Creates a user (unless the tree has it) and adds its SSH keys to its authorized_keys. */
async function addUser(root: string, name: string, keys: string[], sh: (what: string, script: string) => Promise<void>): Promise<void> {
  const passwd = async () => (await readFile(await resolveInRoot(root, '/etc/passwd'), 'utf8').catch(() => '')).split('\n').map((l) => l.split(':'));
  let entry = (await passwd()).find((f) => f[0] === name);
  if (!entry) {
    // useradd takes the shadow entry's date from SOURCE_DATE_EPOCH (shadow ≥ 4.8).
    await sh(`creating the user ${name}`, `useradd --create-home --user-group --shell /bin/bash ${name}\n`);
    entry = (await passwd()).find((f) => f[0] === name);
    if (!entry) throw buildFailed(`useradd did not create the user ${name}`);
  }
  if (keys.length === 0) return;
  const uid = Number(entry[2]);
  const gid = Number(entry[3]);
  const home = entry[5] || (name === 'root' ? '/root' : `/home/${name}`);
  const dir = await resolveInRoot(root, `${home}/.ssh`);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  await chmod(dir, 0o700);
  await chown(dir, uid, gid);
  const file = join(dir, 'authorized_keys');
  const have = (await readFile(file, 'utf8').catch(() => '')).split('\n').filter((l) => l.trim() !== '');
  const all = [...have, ...keys.filter((k) => !have.includes(k))];
  await writeFile(file, `${all.join('\n')}\n`, { mode: 0o600 });
  await chmod(file, 0o600);
  await chown(file, uid, gid);
}

/**
 * cloud-init: keep root's SSH keys usable (Debian's cloud.cfg has disable_root: true), leave
 * the network to osfarm's DHCP when the spec sets it, and for `nocloud` a NoCloud seed in
 * the image (an instance id from the spec, its host name).
 */
async function cloudInit(root: string, spec: BuildSpec): Promise<void> {
  const cfg = ['# written by osfarm', 'disable_root: false'];
  if (spec.network === 'dhcp') cfg.push('network:', '  config: disabled');
  await writeIn(root, '/etc/cloud/cloud.cfg.d/90-osfarm.cfg', `${cfg.join('\n')}\n`);
  if (spec.cloudInit === 'nocloud') {
    await writeIn(root, '/var/lib/cloud/seed/nocloud/meta-data', `instance-id: osfarm-${spec.name}\nlocal-hostname: ${spec.hostname}\n`);
    await writeIn(root, '/var/lib/cloud/seed/nocloud/user-data', '#cloud-config\n# written by osfarm: users, keys and network are in the image already\n{}\n');
  }
}

/**
 * SSH host keys are secrets: an image that boots (or has users with SSH keys) never ships
 * them. openssh-server's installation made them; they go, and on Debian a unit makes new
 * ones before the first sshd start (the RPM family's sshd-keygen does that itself).
 * Runs in the sweep, after the spec's commands.
 */
export async function sweepHostKeys(root: string, spec: BuildSpec, family: Family, log: (l: string) => void): Promise<void> {
  if (spec.kernel === null && !hasSshKeys(spec)) return;
  const ssh = await resolveInRoot(root, '/etc/ssh');
  if (!(await exists(join(ssh, 'sshd_config')))) return;
  const keys = (await readdir(ssh)).filter((n) => /^ssh_host_.*_key(\.pub)?$/.test(n));
  for (const k of keys) await rm(join(ssh, k), { force: true });
  if (keys.length > 0) log(`osfarm: configure: removed ${keys.length} SSH host key file(s); the first boot makes new ones`);
  if (family === 'deb') {
    await writeIn(root, '/etc/systemd/system/osfarm-ssh-hostkeys.service', HOSTKEYS_UNIT);
    const link = await resolveInRoot(root, '/etc/systemd/system/ssh.service.requires/osfarm-ssh-hostkeys.service', false);
    if (!(await exists(link))) {
      await mkdir(join(link, '..'), { recursive: true, mode: 0o755 });
      await symlink('/etc/systemd/system/osfarm-ssh-hostkeys.service', link);
    }
  }
}
