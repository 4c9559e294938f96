/**
 * Every field of a build spec, in one table (in the spirit of mkosi's settings table): what
 * it looks like, how a spec with a parent gets it, what it is to a stage's tag, its XML
 * form and its `osfarm build` flag. The validator (spec.ts), the canonical form, the XML
 * reader and writer, the parent chain, the stage planner and the CLI all read it here.
 * docs/build.md describes each field; docs/stages.md what enters a stage's tag.
 */

/** How a value looks: one value, a list whose order never matters (a set), an ordered list, the files, the users, the parent. */
export type FieldShape = 'scalar' | 'set' | 'list' | 'files' | 'users' | 'parent';

/**
 * What a field is to a stage's tag: `tree`, part of the stage's own config (it changes its
 * tree); `source`, part of where packages come from; `driver`, it picks the bootstrap
 * tool (the tag names the tool instead); `none`, it never changes a tree (the parent
 * enters as the parent's tag).
 */
export type FieldStage = 'tree' | 'source' | 'driver' | 'none';

/**
 * How a spec with a parent gets a field: `own` (this stage's own additions or settings),
 * `inherited` (the parent's unless this spec sets it), `fixed` (the core's: left out it is
 * inherited, a different value is refused, because it decided how the parent's tree was made).
 */
export type FieldChain = 'own' | 'inherited' | 'fixed';

export interface FlagSpec {
  /** The long option of `osfarm build` (`--<name>`). */
  name: string;
  short?: string;
  /** For list fields: the flag adds to the spec file's list, or replaces it. */
  list?: 'append' | 'replace';
  /** Each value may hold several, separated by commas (`-g Base,Core`). */
  commas?: boolean;
  /** The value's placeholder in --help (`NAME`, `PKG[,PKG…]`). */
  value: string;
  /** One line for --help, the man page and shell completion. */
  description: string;
}

export interface SpecField {
  name: string;
  shape: FieldShape;
  stage: FieldStage;
  chain: FieldChain;
  /** Read from a spec's text only, and turned into this field (`rootPassword` → its hash, `mirror` → `mirrors`). */
  becomes?: string;
  /** A plain secret: it never enters a tag or a record. */
  secret?: boolean;
  /** List fields: the XML element of one item (`<packages><package>…`); `cdata` keeps the items' white space. */
  xml?: { item: string; cdata?: boolean };
  /** The `osfarm build` flag that sets it directly (fields with their own flag handling have none). */
  flag?: FlagSpec;
  /**
   * Fields added after spec version 1 have one: while a spec holds it, the field is left out
   * of the canonical form (and so of the digest, the XML and stage tags), so a spec that does
   * not use the field keeps the digest it always had.
   */
  default?: unknown;
}

/** The fields in the order of the canonical form and of the XML a spec is written as. */
export const SPEC_FIELDS: readonly SpecField[] = [
  { name: 'name', shape: 'scalar', stage: 'none', chain: 'own', flag: { name: 'name', value: 'NAME', description: 'the image name (default DISTRIBUTION-RELEASE-ARCH)' } },
  { name: 'distribution', shape: 'scalar', stage: 'tree', chain: 'fixed', flag: { name: 'distribution', value: 'DIST', description: 'the distribution: debian, ubuntu, fedora, centos-stream, rocky, almalinux, scientific-linux' } },
  { name: 'release', shape: 'scalar', stage: 'tree', chain: 'fixed', flag: { name: 'release', value: 'RELEASE', description: 'the release: bookworm, noble, 9 …' } },
  { name: 'architecture', shape: 'scalar', stage: 'tree', chain: 'fixed', flag: { name: 'arch', short: 'a', value: 'ARCH', description: 'the architecture: amd64 (default: this machine\'s), i386, arm64, armhf, or x86_64, aarch64 …' } },
  { name: 'groups', shape: 'set', stage: 'tree', chain: 'own', xml: { item: 'group' }, flag: { name: 'group', short: 'g', list: 'append', commas: true, value: 'GROUP[,GROUP…]', description: 'a bootstrap variant (minbase, core = minbase, base = important, buildd …) or a package group (ssh-server, a task, a comps group)' } },
  { name: 'packages', shape: 'set', stage: 'tree', chain: 'own', xml: { item: 'package' }, flag: { name: 'package', short: 'p', list: 'append', commas: true, value: 'PKG[,PKG…]', description: 'packages to install (in a stage above the core: docs/stages.md)' } },
  { name: 'rootPassword', shape: 'scalar', stage: 'none', chain: 'own', becomes: 'rootPasswordHash', secret: true },
  { name: 'rootPasswordHash', shape: 'scalar', stage: 'tree', chain: 'inherited' },
  { name: 'files', shape: 'files', stage: 'tree', chain: 'own', xml: { item: 'file' } },
  { name: 'commands', shape: 'list', stage: 'tree', chain: 'own', xml: { item: 'command', cdata: true }, flag: { name: 'run', list: 'append', value: 'CMD', description: 'a shell command to run in the image\'s chroot after the packages' } },
  { name: 'hostname', shape: 'scalar', stage: 'tree', chain: 'inherited', flag: { name: 'hostname', value: 'NAME', description: 'the image\'s host name (default localhost)' } },
  { name: 'locale', shape: 'scalar', stage: 'tree', chain: 'inherited', flag: { name: 'locale', value: 'LOCALE', description: 'the default locale (default C.UTF-8), e.g. en_US.UTF-8' } },
  { name: 'timezone', shape: 'scalar', stage: 'tree', chain: 'inherited', flag: { name: 'timezone', value: 'TZ', description: 'the time zone (default Etc/UTC), e.g. Europe/Zurich' } },
  { name: 'outputs', shape: 'set', stage: 'none', chain: 'own', xml: { item: 'output' }, flag: { name: 'format', short: 'f', list: 'replace', commas: true, value: 'FORMAT[,FORMAT…]', description: 'output formats: tar (block-aligned, default), tar.gz, ext4, disk, qcow2, squashfs, oci' } },
  { name: 'mirror', shape: 'list', stage: 'source', chain: 'fixed', becomes: 'mirrors' },
  { name: 'mirrors', shape: 'list', stage: 'source', chain: 'fixed', xml: { item: 'mirror' }, flag: { name: 'mirror', list: 'replace', value: 'URL', description: 'a package mirror (or a "deb …" line) instead of the machine\'s apt sources (default $OSFARM_MIRROR)' } },
  { name: 'components', shape: 'set', stage: 'source', chain: 'fixed', xml: { item: 'component' } },
  { name: 'backend', shape: 'scalar', stage: 'driver', chain: 'fixed', flag: { name: 'backend', value: 'TOOL', description: 'the bootstrap tool: auto (default), mmdebstrap, debootstrap, dnf, yum' } },
  { name: 'gpgCheck', shape: 'scalar', stage: 'source', chain: 'fixed' },
  { name: 'sourceDateEpoch', shape: 'scalar', stage: 'tree', chain: 'inherited', flag: { name: 'source-date-epoch', value: 'S', description: 'build reproducibly as of S seconds since 1970 (default $SOURCE_DATE_EPOCH)' } },
  // Booting (docs/disk.md). The kernel is installed by the first stage that names one; the
  // firmware and the serial console only shape the disk (its boot loaders and command line).
  { name: 'kernel', shape: 'scalar', stage: 'tree', chain: 'inherited', default: null, flag: { name: 'kernel', value: 'on|off|PKG', description: 'a kernel for a bootable disk: on (the distribution\'s, with an initramfs), off (default), or a kernel package (docs/disk.md)' } },
  { name: 'firmware', shape: 'scalar', stage: 'none', chain: 'inherited', default: null, flag: { name: 'firmware', value: 'hybrid|uefi|bios', description: 'how a disk boots: hybrid (UEFI and BIOS, amd64\'s default), uefi (arm64\'s only), bios' } },
  { name: 'serialConsole', shape: 'scalar', stage: 'none', chain: 'inherited', default: true, flag: { name: 'serial-console', value: 'on|off', description: 'a disk\'s kernel also logs to the first serial port (default on)' } },
  { name: 'network', shape: 'scalar', stage: 'tree', chain: 'inherited', default: 'none', flag: { name: 'network', value: 'dhcp|none', description: 'systemd-networkd DHCP on the Ethernet NICs at first boot (default none)' } },
  { name: 'users', shape: 'users', stage: 'tree', chain: 'own', default: [], xml: { item: 'user' } },
  { name: 'cloudInit', shape: 'scalar', stage: 'tree', chain: 'inherited', default: 'none', flag: { name: 'cloud-init', value: 'none|cloud|nocloud', description: 'cloud: install cloud-init; nocloud: also a NoCloud seed from this spec (default none)' } },
  { name: 'parent', shape: 'parent', stage: 'none', chain: 'own' },
];

/** The fields of a validated spec (those a spec's text names only to convert them left out). */
export const CANONICAL_FIELDS: readonly SpecField[] = SPEC_FIELDS.filter((f) => f.becomes === undefined);

/** Every name a spec may contain. */
export const FIELD_NAMES: readonly string[] = SPEC_FIELDS.map((f) => f.name);

/** List fields and the XML element of one item (`<packages><package>…</package></packages>`). */
export const XML_LISTS: Readonly<Record<string, string>> = Object.fromEntries(CANONICAL_FIELDS.filter((f) => f.xml).map((f) => [f.name, f.xml!.item]));

/** Fields a spec keeps from its parent (they decided how the parent's tree was made). */
export const FIXED_FIELDS: readonly string[] = CANONICAL_FIELDS.filter((f) => f.chain === 'fixed').map((f) => f.name);

/** Settings a spec inherits from its parent unless it sets them itself. */
export const INHERITED_FIELDS: readonly string[] = CANONICAL_FIELDS.filter((f) => f.chain === 'inherited').map((f) => f.name);

/** The names of the fields with a given role to a stage. */
export function fieldsFor(stage: FieldStage): string[] {
  return CANONICAL_FIELDS.filter((f) => f.stage === stage).map((f) => f.name);
}

/** Order-free lists: the canonical form (and a stage's tag) sorts and de-duplicates them. */
export const SET_FIELDS: readonly string[] = CANONICAL_FIELDS.filter((f) => f.shape === 'set').map((f) => f.name);

/** Plain secrets a spec may carry only on its way in. */
export const SECRET_FIELDS: readonly string[] = SPEC_FIELDS.filter((f) => f.secret).map((f) => f.name);

/** The spec text's fields that, when given, stand for `name` (`mirror` for `mirrors`, `rootPassword` for `rootPasswordHash`). */
export function aliasesOf(name: string): string[] {
  return SPEC_FIELDS.filter((f) => f.becomes === name).map((f) => f.name);
}
