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

/** Output formats: the block-aligned tar is the default. */
export const OUTPUT_FORMATS = ['tar', 'tar.gz', 'ext4', 'qcow2', 'squashfs'] as const;
export type OutputFormat = (typeof OUTPUT_FORMATS)[number];

export const OUTPUT_ALIASES: Record<string, OutputFormat> = {
  'block-tar': 'tar',
  'aligned-tar': 'tar',
  btar: 'tar',
  tgz: 'tar.gz',
  targz: 'tar.gz',
  raw: 'ext4',
  img: 'ext4',
  sqfs: 'squashfs',
};

/** The file name ending of each output format. */
export const OUTPUT_EXTENSION: Record<OutputFormat, string> = {
  tar: '.tar',
  'tar.gz': '.tar.gz',
  ext4: '.ext4',
  qcow2: '.qcow2',
  squashfs: '.squashfs',
};

/** The format a file name implies, if any (`.tar.gz`/`.tgz`, `.tar`, `.ext4`/`.img`/`.raw`, `.qcow2`, `.squashfs`/`.sqfs`). */
export function outputFormatOfPath(path: string): OutputFormat | undefined {
  const p = path.toLowerCase();
  if (p.endsWith('.tar.gz') || p.endsWith('.tgz')) return 'tar.gz';
  if (p.endsWith('.tar')) return 'tar';
  if (p.endsWith('.ext4') || p.endsWith('.img') || p.endsWith('.raw')) return 'ext4';
  if (p.endsWith('.qcow2')) return 'qcow2';
  if (p.endsWith('.squashfs') || p.endsWith('.sqfs')) return 'squashfs';
  return undefined;
}

export const BOOTSTRAP_TOOLS = ['auto', 'mmdebstrap', 'debootstrap', 'dnf', 'yum'] as const;
export type BootstrapTool = (typeof BOOTSTRAP_TOOLS)[number];

export function bootstrapToolsFor(family: Family): BootstrapTool[] {
  return family === 'deb' ? ['auto', 'mmdebstrap', 'debootstrap'] : ['auto', 'dnf', 'yum'];
}
