/**
 * What osfarm knows about distributions, architectures and groups, shared by the spec
 * validator and the drivers. docs/build.md has the same tables in prose.
 */

export const DISTRIBUTIONS = ['debian', 'ubuntu', 'fedora', 'centos-stream', 'rocky', 'almalinux', 'scientific-linux'] as const;
export type Distribution = (typeof DISTRIBUTIONS)[number];

export const DISTRIBUTION_ALIASES: Record<string, Distribution> = {
  centos: 'centos-stream',
  centosstream: 'centos-stream',
  alma: 'almalinux',
  rockylinux: 'rocky',
  sl: 'scientific-linux',
  scientific: 'scientific-linux',
  scientificlinux: 'scientific-linux',
  slc: 'scientific-linux',
};

export type Family = 'deb' | 'rpm';

export function familyOf(d: Distribution): Family {
  return d === 'debian' || d === 'ubuntu' ? 'deb' : 'rpm';
}

export const ARCHITECTURES = ['amd64', 'i386', 'arm64', 'armhf'] as const;
export type Architecture = (typeof ARCHITECTURES)[number];

export const ARCH_ALIASES: Record<string, Architecture> = {
  x86_64: 'amd64',
  x64: 'amd64',
  i686: 'i386',
  i586: 'i386',
  x86: 'i386',
  ia32: 'i386',
  aarch64: 'arm64',
  armv7hl: 'armhf',
  armv7l: 'armhf',
  armhfp: 'armhf',
  arm: 'armhf',
};

/** The architecture's name in the RPM world (`dnf --forcearch`, `$basearch`). */
export const RPM_ARCH: Record<Architecture, string> = {
  amd64: 'x86_64',
  i386: 'i686',
  arm64: 'aarch64',
  armhf: 'armv7hl',
};

/** The CPU the qemu-user-static interpreter is named after (`qemu-<cpu>-static`). */
export const QEMU_CPU: Record<Architecture, string> = {
  amd64: 'x86_64',
  i386: 'i386',
  arm64: 'aarch64',
  armhf: 'arm',
};

export function hostArchitecture(): Architecture {
  switch (process.arch) {
    case 'x64':
      return 'amd64';
    case 'ia32':
      return 'i386';
    case 'arm64':
      return 'arm64';
    case 'arm':
      return 'armhf';
    default:
      return 'amd64';
  }
}

/** Architectures this machine runs without emulation. */
export function nativeArchitectures(host = hostArchitecture()): Architecture[] {
  if (host === 'amd64') return ['amd64', 'i386'];
  if (host === 'arm64') return ['arm64', 'armhf'];
  return [host];
}

/** mmdebstrap's variants, smallest first. */
export const DEB_VARIANTS = ['extract', 'custom', 'essential', 'apt', 'required', 'minbase', 'buildd', 'important', 'debootstrap', 'standard'] as const;
export type DebVariant = (typeof DEB_VARIANTS)[number];

/** Group names that choose a variant instead of naming one (genfs's `-g Core`, `-g Base`). */
export const DEB_VARIANT_ALIASES: Record<string, DebVariant> = {
  core: 'minbase',
  minimal: 'minbase',
  base: 'important',
  build: 'buildd',
  'build-essential': 'buildd',
};

/** Debian tasksel tasks a group may name without the `task-` prefix. */
export const DEBIAN_TASKS = [
  'desktop',
  'gnome-desktop',
  'gnome-flashback-desktop',
  'kde-desktop',
  'xfce-desktop',
  'lxde-desktop',
  'lxqt-desktop',
  'cinnamon-desktop',
  'mate-desktop',
  'web-server',
  'ssh-server',
  'laptop',
] as const;

/** Ubuntu groups that are metapackages. */
export const UBUNTU_GROUPS: Record<string, string> = {
  'ubuntu-minimal': 'ubuntu-minimal',
  'ubuntu-standard': 'ubuntu-standard',
  'ubuntu-server': 'ubuntu-server',
  server: 'ubuntu-server',
  cloud: 'ubuntu-server',
  'ssh-server': 'openssh-server',
};

/** RPM group aliases: the names genfs and Debian users reach for, in comps ids. */
export const RPM_GROUP_ALIASES: Record<string, string> = {
  minbase: 'core',
  minimal: 'core',
};

/** How one spec group is realised by a driver. */
export type GroupPlan =
  | { kind: 'variant'; variant: DebVariant }
  | { kind: 'packages'; packages: string[] }
  | { kind: 'comps'; group: string };

/** Maps a group to a variant, packages or a comps group; undefined if the distribution has no such group. */
export function planGroup(distribution: Distribution, group: string): GroupPlan | undefined {
  const g = group.toLowerCase();
  if (familyOf(distribution) === 'rpm') {
    const name = group.startsWith('@') ? group.slice(1) : group;
    return { kind: 'comps', group: RPM_GROUP_ALIASES[name.toLowerCase()] ?? name };
  }
  if ((DEB_VARIANTS as readonly string[]).includes(g)) return { kind: 'variant', variant: g as DebVariant };
  const alias = DEB_VARIANT_ALIASES[g];
  if (alias) return { kind: 'variant', variant: alias };
  if (distribution === 'ubuntu') {
    const pkg = UBUNTU_GROUPS[g];
    return pkg ? { kind: 'packages', packages: [pkg] } : undefined;
  }
  if (/^task-[a-z0-9-]+$/.test(g)) return { kind: 'packages', packages: [g] };
  if ((DEBIAN_TASKS as readonly string[]).includes(g)) return { kind: 'packages', packages: [`task-${g}`] };
  return undefined;
}

/** The names a group may take for a distribution (for error messages). */
export function groupHelp(distribution: Distribution): string {
  if (familyOf(distribution) === 'rpm') return 'a comps group id or name (e.g. core, standard, "Development Tools")';
  const variants = `a variant (${DEB_VARIANTS.join(', ')}), core, base`;
  if (distribution === 'ubuntu') return `${variants}, or one of ${Object.keys(UBUNTU_GROUPS).join(', ')}`;
  return `${variants}, a task-* package or a task name (${DEBIAN_TASKS.join(', ')})`;
}

/**
 * Output formats: the block-aligned tar is the default. `disk` is a bootable raw disk (GPT,
 * ESP, BIOS boot partition, ext4 root), `qcow2` the same disk converted, `ext4` the root
 * file system alone, `oci` an OCI image archive whose layer is the aligned tar.
 */
export const OUTPUT_FORMATS = ['tar', 'tar.gz', 'ext4', 'disk', 'qcow2', 'squashfs', 'oci'] as const;
export type OutputFormat = (typeof OUTPUT_FORMATS)[number];

export const OUTPUT_ALIASES: Record<string, OutputFormat> = {
  'block-tar': 'tar',
  'aligned-tar': 'tar',
  btar: 'tar',
  tgz: 'tar.gz',
  targz: 'tar.gz',
  raw: 'disk',
  img: 'disk',
  sqfs: 'squashfs',
  'oci-archive': 'oci',
};

/** The file name ending of each output format. */
export const OUTPUT_EXTENSION: Record<OutputFormat, string> = {
  tar: '.tar',
  'tar.gz': '.tar.gz',
  ext4: '.ext4',
  disk: '.img',
  qcow2: '.qcow2',
  squashfs: '.squashfs',
  oci: '.oci.tar',
};

/** The outputs that boot: they need a kernel in the image. */
export const BOOTABLE_OUTPUTS: readonly OutputFormat[] = ['disk', 'qcow2'];

/** The format a file name implies, if any (`.tar.gz`/`.tgz`, `.oci.tar`, `.tar`, `.ext4`, `.img`/`.raw`, `.qcow2`, `.squashfs`/`.sqfs`). */
export function outputFormatOfPath(path: string): OutputFormat | undefined {
  const p = path.toLowerCase();
  if (p.endsWith('.tar.gz') || p.endsWith('.tgz')) return 'tar.gz';
  if (p.endsWith('.oci.tar')) return 'oci';
  if (p.endsWith('.tar')) return 'tar';
  if (p.endsWith('.ext4')) return 'ext4';
  if (p.endsWith('.img') || p.endsWith('.raw')) return 'disk';
  if (p.endsWith('.qcow2')) return 'qcow2';
  if (p.endsWith('.squashfs') || p.endsWith('.sqfs')) return 'squashfs';
  return undefined;
}

/** How a disk boots: UEFI (systemd-boot on the ESP), BIOS (GRUB for PC), or both from one disk. */
export const FIRMWARES = ['uefi', 'bios', 'hybrid'] as const;
export type Firmware = (typeof FIRMWARES)[number];

/** The firmwares a disk of each architecture can boot with, the default first; absent: no bootable disks. */
export const BOOT_FIRMWARES: Partial<Record<Architecture, readonly Firmware[]>> = {
  amd64: ['hybrid', 'uefi', 'bios'],
  arm64: ['uefi'],
};

/**
 * The line a booted image prints on its console once multi-user.target is up (the unit
 * osfarm-boot-marker.service, docs/disk.md): how a runner sees that a boot finished.
 */
export const BOOT_MARKER = 'OSFARM-BOOT-MARKER';

/** The serial console of each architecture's usual virtual machine (qemu -M virt on arm64: the PL011). */
export const SERIAL_TTY: Record<Architecture, string> = { amd64: 'ttyS0', i386: 'ttyS0', arm64: 'ttyAMA0', armhf: 'ttyAMA0' };

/** The firmware a disk boots with: the spec's, else the architecture's default. */
export function diskFirmware(firmware: Firmware | null, architecture: Architecture): Firmware {
  return firmware ?? BOOT_FIRMWARES[architecture]?.[0] ?? 'uefi';
}

/** The kernel package `kernel: true` installs: the distribution's generic kernel for the architecture. */
export function defaultKernelPackage(distribution: Distribution, architecture: Architecture): string {
  if (familyOf(distribution) === 'rpm') return 'kernel';
  if (distribution === 'ubuntu') return 'linux-image-virtual';
  return { amd64: 'linux-image-amd64', arm64: 'linux-image-arm64', i386: 'linux-image-686', armhf: 'linux-image-armmp' }[architecture];
}

/** First-boot networking: DHCP on the Ethernet NICs (systemd-networkd), or none configured. */
export const NETWORKS = ['none', 'dhcp'] as const;
export type Network = (typeof NETWORKS)[number];

/**
 * cloud-init: none; `cloud` installs it to take its configuration from the cloud it boots
 * in; `nocloud` also puts a NoCloud seed made from the spec (host name, users' keys) into the image.
 */
export const CLOUD_INIT_MODES = ['none', 'cloud', 'nocloud'] as const;
export type CloudInitMode = (typeof CLOUD_INIT_MODES)[number];

export const BOOTSTRAP_TOOLS = ['auto', 'mmdebstrap', 'debootstrap', 'dnf', 'yum'] as const;
export type BootstrapTool = (typeof BOOTSTRAP_TOOLS)[number];

export function bootstrapToolsFor(family: Family): BootstrapTool[] {
  return family === 'deb' ? ['auto', 'mmdebstrap', 'debootstrap'] : ['auto', 'dnf', 'yum'];
}
