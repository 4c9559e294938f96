/**
 * The build spec: what image to build. Read from YAML, JSON or XML (or genfs-style flags),
 * validated field by field before anything runs, normalised, and digested.
 * docs/build.md documents every field.
 */
import { createHash } from 'node:crypto';
import { closeSync, lstatSync, openSync, readdirSync, readFileSync, readlinkSync, readSync, statSync } from 'node:fs';
import { dirname, isAbsolute, join, posix, resolve } from 'node:path';

import {
  ARCH_ALIASES,
  ARCHITECTURES,
  type Architecture,
  BOOT_FIRMWARES,
  BOOTABLE_OUTPUTS,
  BOOTSTRAP_TOOLS,
  type BootstrapTool,
  bootstrapToolsFor,
  CLOUD_INIT_MODES,
  type CloudInitMode,
  defaultKernelPackage,
  DISTRIBUTION_ALIASES,
  DISTRIBUTIONS,
  type Distribution,
  familyOf,
  type Firmware,
  FIRMWARES,
  groupHelp,
  hostArchitecture,
  type Network,
  NETWORKS,
  OUTPUT_ALIASES,
  OUTPUT_FORMATS,
  type OutputFormat,
  planGroup,
} from './distros.js';
import { didYouMean } from '../base/suggest.js';
import { SpecError, type SpecIssue } from './errors.js';
import { aliasesOf, CANONICAL_FIELDS, FIELD_NAMES, FIXED_FIELDS, INHERITED_FIELDS, type SpecField } from './fields.js';
import { checkSpecSize, formatOf, parseText, type SpecFormat, sniffFormat } from './formats.js';
import { CRYPT_HASH, deriveSalt, sha512Crypt } from './password.js';

/** The spec format version; part of the canonical form, so a change of meaning changes every digest. */
export const SPEC_VERSION = 1;

/** A file or directory to copy into the image (from `source` on the host, or inline `content`). */
export interface SpecFile {
  /** Absolute path inside the image. */
  destination: string;
  /** Absolute path on the host (relative paths in a spec file are resolved against the spec's directory). */
  source?: string;
  /** Inline text content (instead of `source`). */
  content?: string;
  /** Octal permission bits, e.g. `"0644"`; default: the source's mode, or 0644 for `content`. */
  mode?: string;
}

/** A user of the image: created unless it exists (root does), with the SSH public keys that may log in as it. */
export interface SpecUser {
  name: string;
  /** OpenSSH public keys (`ssh-ed25519 AAAA… comment`), one per item: its ~/.ssh/authorized_keys. */
  sshKeys: string[];
}

/** A validated spec with every default filled. A plain root password never appears here, only its hash. */
export interface BuildSpec {
  name: string;
  distribution: Distribution;
  release: string;
  architecture: Architecture;
  groups: string[];
  packages: string[];
  /** crypt(3) hash for root (`$6$…`), or null to leave root's password as the distribution ships it (locked). */
  rootPasswordHash: string | null;
  files: SpecFile[];
  commands: string[];
  hostname: string;
  locale: string;
  timezone: string;
  outputs: OutputFormat[];
  /** Mirror URLs (or, for Debian, whole `deb …` lines); empty = the host's apt sources / the distribution's repos. */
  mirrors: string[];
  components: string[];
  backend: BootstrapTool;
  /** Check package signatures (RPM: dnf gpgcheck). */
  gpgCheck: boolean;
  /** Timestamp for reproducible builds; null = take $SOURCE_DATE_EPOCH at build time, if set. */
  sourceDateEpoch: number | null;
  /** The kernel package the image boots (installed with an initramfs by the first stage that names it), or null: none. */
  kernel: string | null;
  /** How a disk output boots; null: the architecture's default (hybrid UEFI + BIOS on amd64, UEFI on arm64). */
  firmware: Firmware | null;
  /** A disk's kernel command line sends the console to the first serial port too (ttyS0; ttyAMA0 on arm64). */
  serialConsole: boolean;
  /** First-boot networking: `dhcp` on the Ethernet NICs with systemd-networkd, or `none`. */
  network: Network;
  /** Users and their SSH keys (this spec's own; a parent's stay in its tree). */
  users: SpecUser[];
  /** cloud-init: none, `cloud` (installed, configured by the cloud) or `nocloud` (with a seed made from this spec). */
  cloudInit: CloudInitMode;
  /**
   * The spec this one is built on (its stage starts as a copy of the parent's tree). Then
   * `groups`, `packages`, `files` and `commands` are this spec's own additions, and the
   * other fields are inherited unless this spec sets them. See docs/stages.md.
   */
  parent?: BuildSpec;
}

export interface SpecOptions {
  /** Directory that relative `files[].source` paths are resolved against (default: the current directory). */
  baseDir?: string;
  /**
   * Finds a parent named neither by a spec file nor inline (e.g. an image name in the
   * repository): returns its spec object and the directory its relative paths start from.
   */
  resolveParent?: (ref: string) => { raw: unknown; baseDir?: string } | undefined;
  /** Spec files already on the parent chain (loop detection); internal. */
  chain?: string[];
}

/** Parses and validates a spec's text. Throws `SpecError` (`OSFARM_BAD_SPEC`) naming each bad field. */
export function parseSpec(text: string, format?: SpecFormat, options: SpecOptions = {}): BuildSpec {
  const raw = parseText(text, format ?? sniffFormat(text));
  return specFromObject(raw, options);
}

/** What `validateSpec` finds: the normalised spec, or every problem. */
export type SpecValidation = { valid: true; spec: BuildSpec; issues: [] } | { valid: false; issues: SpecIssue[] };

/**
 * Validates a spec, an object or text (YAML, JSON or XML, sniffed), without throwing for a
 * bad one: the normalised spec, or the issues (each field's path and what is wrong).
 * Other errors (a parent that cannot be resolved for a reason other than the spec) throw.
 */
export function validateSpec(input: unknown, options: SpecOptions = {}): SpecValidation {
  try {
    const spec = typeof input === 'string' ? parseSpec(input, undefined, options) : specFromObject(input, options);
    return { valid: true, spec, issues: [] };
  } catch (err) {
    if (err instanceof SpecError) return { valid: false, issues: err.issues };
    throw err;
  }
}

/** Reads, parses and validates a spec file (`.yaml`/`.yml`, `.json`, `.xml`; other names are sniffed). */
export function loadSpec(path: string, options: Omit<SpecOptions, 'baseDir'> = {}): BuildSpec {
  let text: string;
  try {
    text = readSpecFile(path);
  } catch (err) {
    if (err instanceof SpecError) throw err;
    throw new SpecError([{ path: 'spec', message: `cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}` }]);
  }
  return parseSpec(text, formatOf(path) ?? sniffFormat(text), { ...options, baseDir: dirname(resolve(path)), chain: [...(options.chain ?? []), resolve(path)] });
}

/** A spec file's text, refused once it passes MAX_SPEC_BYTES (a pipe too: read in pieces, never whole). */
function readSpecFile(path: string): string {
  const st = statSync(path);
  if (st.isFile()) checkSpecSize(st.size, path);
  const fd = openSync(path, 'r');
  try {
    const parts: Buffer[] = [];
    let total = 0;
    for (;;) {
      const b = Buffer.allocUnsafe(64 << 10);
      const n = readSync(fd, b, 0, b.length, null);
      if (n === 0) break;
      total += n;
      checkSpecSize(total, path);
      parts.push(b.subarray(0, n));
    }
    return Buffer.concat(parts, total).toString('utf8');
  } finally {
    closeSync(fd);
  }
}

function suggest(key: string): string {
  return didYouMean(key, FIELD_NAMES, 1);
}

const RELEASE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const NAME = /^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$/;
const DEB_PACKAGE = /^[a-z0-9][a-z0-9+.-]+(?:[=/][A-Za-z0-9.+~:_-]+)?$/;
const RPM_PACKAGE = /^[A-Za-z0-9_][A-Za-z0-9_.+-]*(?:-[A-Za-z0-9_.+~:^-]+)?$/;
const GROUP = /^@?[A-Za-z0-9][A-Za-z0-9 ._+:()-]{0,127}$/;
const HOSTNAME = /^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/;
const LOCALE = /^(?:C|POSIX|C\.UTF-8|C\.utf8|[a-z]{2,3}(?:_[A-Z]{2})?(?:\.[A-Za-z0-9-]+)?(?:@[a-z]+)?)$/;
const TIMEZONE = /^[A-Za-z0-9_+-]+(?:\/[A-Za-z0-9_+-]+){0,2}$/;
const COMPONENT = /^[a-z0-9][a-z0-9-]*$/;
const MIRROR = /^(?:(?:https?|ftp|file|mirror\+https?|mirror\+file):\/\/\S+|deb(?:-src)? \S.*)$/;
const MODE = /^0?[0-7]{3,4}$/;
const USER = /^[a-z_][a-z0-9_-]{0,31}$/;
const SSH_KEY = /^(?:ssh-(?:ed25519|rsa|dss)|ecdsa-sha2-nistp(?:256|384|521)|sk-(?:ssh-ed25519|ecdsa-sha2-nistp256)@openssh\.com) [A-Za-z0-9+/]+=*(?: [^\n\r]*)?$/;

/**
 * What a spec that may not read this machine's files does wrong: one a client sends to a
 * server (the web API) may give file contents but no `files[].source`, and name a parent
 * by image name or digest but not by path. Empty if nothing.
 */
export function hostPathIssues(raw: unknown): SpecIssue[] {
  const issues: SpecIssue[] = [];
  const visit = (r: Record<string, unknown>, at: string) => {
    if (Array.isArray(r.files)) {
      r.files.forEach((f, i) => {
        if (typeof f === 'object' && f !== null && 'source' in f) issues.push({ path: `${at}.files[${i}].source`, message: 'a spec sent over the web cannot copy files of the server: give `content` instead' });
      });
    }
    if (typeof r.parent === 'string' && (r.parent.includes('/') || r.parent.startsWith('.'))) {
      issues.push({ path: `${at}.parent`, message: 'over the web a parent is an image in the repository (name or digest), not a path' });
    } else if (typeof r.parent === 'object' && r.parent !== null && !Array.isArray(r.parent)) visit(r.parent as Record<string, unknown>, `${at}.parent`);
  };
  if (typeof raw === 'object' && raw !== null && !Array.isArray(raw)) visit(raw as Record<string, unknown>, 'spec');
  return issues;
}

/** Checks a plain object against the spec format and returns the normalised spec; hashes a plain root password at once. */
export function specFromObject(input: unknown, options: SpecOptions = {}): BuildSpec {
  const issues: SpecIssue[] = [];
  const bad = (path: string, message: string) => issues.push({ path, message });
  if (typeof input !== 'object' || input === null || Array.isArray(input)) {
    throw new SpecError([{ path: 'spec', message: 'must be a mapping of fields (distribution, release, packages, …)' }]);
  }
  const raw = { ...(input as Record<string, unknown>) };
  for (const key of Object.keys(raw)) {
    if (!FIELD_NAMES.includes(key)) bad(`spec.${key}`, `unknown field${suggest(key)}`);
  }
  // A parent first: this spec inherits what it leaves out.
  const parent = raw.parent === undefined || raw.parent === null ? undefined : parentSpec(raw.parent, options, bad);
  if (parent) inheritDefaults(raw, parent);
  // A parent that failed was reported; the fields it would have given are not "required" on top.
  const required = raw.parent === undefined || raw.parent === null;

  const str = (key: string, opts: { required?: boolean; re?: RegExp; what?: string } = {}): string | undefined => {
    const v = raw[key];
    if (v === undefined || v === null) {
      if (opts.required) bad(`spec.${key}`, 'is required');
      return undefined;
    }
    if (typeof v !== 'string' && typeof v !== 'number') {
      bad(`spec.${key}`, `must be a string, not ${describe(v)}`);
      return undefined;
    }
    const s = String(v);
    if (opts.re && !opts.re.test(s)) {
      bad(`spec.${key}`, `${JSON.stringify(s)} is not ${opts.what ?? 'valid'}`);
      return undefined;
    }
    return s;
  };
  const list = (key: string): unknown[] => {
    const v = raw[key];
    if (v === undefined || v === null) return [];
    if (typeof v === 'string') return [v];
    if (!Array.isArray(v)) {
      bad(`spec.${key}`, `must be a list, not ${describe(v)}`);
      return [];
    }
    return v;
  };
  const strList = (key: string, re: RegExp | ((s: string) => string | undefined), what = 'valid'): string[] => {
    const out: string[] = [];
    list(key).forEach((item, i) => {
      const path = `spec.${key}[${i}]`;
      if (typeof item !== 'string' && typeof item !== 'number') return bad(path, `must be a string, not ${describe(item)}`);
      const s = String(item).trim();
      if (s === '') return bad(path, 'is empty');
      if (re instanceof RegExp) {
        if (!re.test(s)) return bad(path, `${JSON.stringify(s)} is not ${what}`);
      } else {
        const problem = re(s);
        if (problem) return bad(path, problem);
      }
      out.push(s);
    });
    return out;
  };

  // distribution, release, architecture
  let distribution: Distribution | undefined;
  const d = str('distribution', { required });
  if (d !== undefined) {
    const key = d.toLowerCase();
    const alias = DISTRIBUTION_ALIASES[key.replace(/[-_ ]/g, '')];
    if ((DISTRIBUTIONS as readonly string[]).includes(key)) distribution = key as Distribution;
    else if (alias) distribution = alias;
    else bad('spec.distribution', `${JSON.stringify(d)} is not a distribution osfarm builds${didYouMean(d, [...DISTRIBUTIONS, ...Object.keys(DISTRIBUTION_ALIASES)], 1)}: one of ${DISTRIBUTIONS.join(', ')}`);
  }
  const release = str('release', { required, re: RELEASE, what: 'a release name (letters, digits, . _ -)' });
  let architecture: Architecture = hostArchitecture();
  const a = str('architecture');
  if (a !== undefined) {
    const key = a.toLowerCase();
    if ((ARCHITECTURES as readonly string[]).includes(key)) architecture = key as Architecture;
    else if (ARCH_ALIASES[key]) architecture = ARCH_ALIASES[key]!;
    else bad('spec.architecture', `${JSON.stringify(a)} is not an architecture osfarm builds${didYouMean(a, [...ARCHITECTURES, ...Object.keys(ARCH_ALIASES)], 1)}: one of ${ARCHITECTURES.join(', ')}, or x86_64, i686, aarch64, armv7hl`);
  }
  const family = distribution ? familyOf(distribution) : undefined;
  const name = str('name', { re: NAME, what: 'an image name (letters, digits, . _ + -, at most 128)' });

  // groups and packages
  const groups = strList('groups', GROUP, 'a group name');
  if (distribution) {
    let variantAt = -1;
    groups.forEach((g, i) => {
      const plan = planGroup(distribution!, g);
      if (!plan) bad(`spec.groups[${i}]`, `${JSON.stringify(g)} is not a group of ${distribution}: use ${groupHelp(distribution!)}`);
      else if (plan.kind === 'variant') {
        if (variantAt >= 0) bad(`spec.groups[${i}]`, `${JSON.stringify(g)} chooses a second variant (spec.groups[${variantAt}] already chose one)`);
        else variantAt = i;
      }
    });
  }
  const pkgRe = family === 'rpm' ? RPM_PACKAGE : DEB_PACKAGE;
  const packages = strList('packages', pkgRe, family === 'rpm' ? 'an RPM package name' : 'a Debian package name (lower case letters, digits, + . -; optionally =version or /suite)');

  // root password
  const hasPlain = raw.rootPassword !== undefined && raw.rootPassword !== null;
  const hasHash = raw.rootPasswordHash !== undefined && raw.rootPasswordHash !== null;
  let plainPassword: string | undefined;
  let rootPasswordHash: string | null = null;
  if (hasPlain && hasHash) bad('spec.rootPassword', 'give rootPassword or rootPasswordHash, not both');
  else if (hasPlain) {
    const p = raw.rootPassword;
    if (typeof p !== 'string' && typeof p !== 'number') bad('spec.rootPassword', `must be a string, not ${describe(p)}`);
    else if (String(p).length === 0) bad('spec.rootPassword', 'is empty (leave it out to keep root locked)');
    else if (/[\n\r\0]/.test(String(p))) bad('spec.rootPassword', 'cannot contain a line break or NUL');
    else if (String(p).length > 1024) bad('spec.rootPassword', 'is longer than 1024 characters');
    else plainPassword = String(p);
  } else if (hasHash) {
    const h = raw.rootPasswordHash;
    if (typeof h !== 'string' || !CRYPT_HASH.test(h)) bad('spec.rootPasswordHash', 'must be a crypt(3) hash such as "$6$salt$…" (openssl passwd -6)');
    else rootPasswordHash = h;
  }

  // files
  const baseDir = options.baseDir ?? process.cwd();
  const files: SpecFile[] = [];
  list('files').forEach((item, i) => {
    const path = `spec.files[${i}]`;
    if (typeof item !== 'object' || item === null || Array.isArray(item)) return bad(path, `must be a mapping with destination and source or content, not ${describe(item)}`);
    const f = item as Record<string, unknown>;
    for (const k of Object.keys(f)) if (!['destination', 'source', 'content', 'mode'].includes(k)) bad(`${path}.${k}`, 'unknown field (destination, source, content, mode)');
    const dest = f.destination;
    let destination: string | undefined;
    if (typeof dest !== 'string' || dest === '') bad(`${path}.destination`, 'is required: an absolute path inside the image');
    else if (!dest.startsWith('/')) bad(`${path}.destination`, `${JSON.stringify(dest)} must be an absolute path inside the image`);
    else if (/[\0\n\r]/.test(dest) || dest.split('/').some((s) => s === '..' || s === '.')) bad(`${path}.destination`, `${JSON.stringify(dest)} must not contain . or .. components or line breaks`);
    else if (posix.normalize(dest) === '/') bad(`${path}.destination`, 'cannot be the image root itself');
    else destination = posix.normalize(dest).replace(/\/$/, '');
    const hasSource = f.source !== undefined && f.source !== null;
    const hasContent = f.content !== undefined && f.content !== null;
    let source: string | undefined;
    let content: string | undefined;
    if (hasSource === hasContent) bad(path, 'needs exactly one of source (a host path) or content (inline text)');
    else if (hasSource) {
      if (typeof f.source !== 'string' || f.source === '') bad(`${path}.source`, 'must be a path on the host');
      else {
        source = isAbsolute(f.source) ? f.source : resolve(baseDir, f.source);
        try {
          const st = statSync(source);
          if (!st.isFile() && !st.isDirectory()) bad(`${path}.source`, `${source} is neither a file nor a directory`);
        } catch (err) {
          bad(`${path}.source`, `${source} cannot be read (${(err as NodeJS.ErrnoException).code ?? 'error'})`);
        }
      }
    } else if (typeof f.content !== 'string') bad(`${path}.content`, `must be text, not ${describe(f.content)}`);
    else content = f.content;
    let mode: string | undefined;
    if (f.mode !== undefined && f.mode !== null) {
      if (typeof f.mode !== 'string') bad(`${path}.mode`, `write the mode as a quoted octal string like "0644" (got ${describe(f.mode)})`);
      else if (!MODE.test(f.mode)) bad(`${path}.mode`, `${JSON.stringify(f.mode)} is not an octal mode like "0644"`);
      else mode = f.mode.padStart(4, '0');
    }
    if (destination !== undefined && (source !== undefined || content !== undefined)) {
      const file: SpecFile = { destination };
      if (source !== undefined) file.source = source;
      if (content !== undefined) file.content = content;
      if (mode !== undefined) file.mode = mode;
      files.push(file);
    }
  });

  // commands
  const commands: string[] = [];
  list('commands').forEach((c, i) => {
    if (typeof c !== 'string') return bad(`spec.commands[${i}]`, `must be a shell command string, not ${describe(c)}`);
    if (c.trim() === '') return bad(`spec.commands[${i}]`, 'is empty');
    if (c.includes('\0')) return bad(`spec.commands[${i}]`, 'contains NUL');
    commands.push(c);
  });

  const hostname = str('hostname', { re: HOSTNAME, what: 'a host name (RFC 1123)' }) ?? 'localhost';
  const locale = str('locale', { re: LOCALE, what: 'a locale such as C.UTF-8 or en_US.UTF-8' }) ?? 'C.UTF-8';
  let timezone = str('timezone', { re: TIMEZONE, what: 'a time zone such as Etc/UTC or Europe/Zurich' }) ?? 'Etc/UTC';
  if (timezone === 'UTC') timezone = 'Etc/UTC';

  // outputs
  const outputs: OutputFormat[] = [];
  list('outputs').forEach((o, i) => {
    if (typeof o !== 'string') return bad(`spec.outputs[${i}]`, `must be a format name, not ${describe(o)}`);
    const k = o.toLowerCase();
    const f = (OUTPUT_FORMATS as readonly string[]).includes(k) ? (k as OutputFormat) : OUTPUT_ALIASES[k];
    if (!f) return bad(`spec.outputs[${i}]`, `${JSON.stringify(o)} is not an output format (${OUTPUT_FORMATS.join(', ')})`);
    if (!outputs.includes(f)) outputs.push(f);
  });
  if (outputs.length === 0) outputs.push('tar');

  // mirrors
  if (raw.mirror !== undefined && raw.mirrors !== undefined) bad('spec.mirror', 'give mirror or mirrors, not both');
  const mirrors = strList(raw.mirror !== undefined ? 'mirror' : 'mirrors', (s) => {
    if (/[\n\r\0]/.test(s)) return 'contains a line break';
    if (!MIRROR.test(s)) return `${JSON.stringify(s)} is not a mirror URL (http://, https://, file://) or a "deb …" line`;
    if (family === 'rpm' && s.startsWith('deb')) return 'a "deb …" line is for Debian and Ubuntu; give an RPM repository URL';
    return undefined;
  });
  const components = strList('components', COMPONENT, 'an archive component (main, contrib, universe…)');
  if (components.length === 0) components.push('main');

  let backend: BootstrapTool = 'auto';
  const b = str('backend');
  if (b !== undefined) {
    if (!(BOOTSTRAP_TOOLS as readonly string[]).includes(b)) bad('spec.backend', `${JSON.stringify(b)} is not a backend (${BOOTSTRAP_TOOLS.join(', ')})`);
    else if (family && !bootstrapToolsFor(family).includes(b as BootstrapTool)) bad('spec.backend', `${b} cannot build ${distribution} (use ${bootstrapToolsFor(family).join(', ')})`);
    else backend = b as BootstrapTool;
  }
  let gpgCheck = true;
  if (raw.gpgCheck !== undefined && raw.gpgCheck !== null) {
    if (typeof raw.gpgCheck !== 'boolean') bad('spec.gpgCheck', `must be true or false, not ${describe(raw.gpgCheck)}`);
    else gpgCheck = raw.gpgCheck;
  }
  let sourceDateEpoch: number | null = null;
  const sde = raw.sourceDateEpoch;
  if (sde !== undefined && sde !== null) {
    const n = typeof sde === 'string' && /^\d+$/.test(sde) ? Number(sde) : sde;
    if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 0) bad('spec.sourceDateEpoch', 'must be a whole number of seconds since 1970 (like $SOURCE_DATE_EPOCH)');
    else sourceDateEpoch = n;
  }

  // booting and first-boot configuration
  const onOff = (key: string, fallback: boolean): boolean => {
    const v = raw[key];
    if (v === undefined || v === null) return fallback;
    if (typeof v === 'boolean') return v;
    const k = String(v).toLowerCase();
    if (['on', 'yes', 'true', '1'].includes(k)) return true;
    if (['off', 'no', 'false', '0'].includes(k)) return false;
    bad(`spec.${key}`, `must be true or false (on/off), not ${describe(v)}`);
    return fallback;
  };
  const oneOf = <T extends string>(key: string, values: readonly T[], fallback: T, what: string): T => {
    const v = str(key);
    if (v === undefined) return fallback;
    const k = v.toLowerCase();
    if ((values as readonly string[]).includes(k)) return k as T;
    bad(`spec.${key}`, `${JSON.stringify(v)} is not ${what} (${values.join(', ')})`);
    return fallback;
  };
  let kernel: string | null = null;
  const kv = raw.kernel;
  if (kv !== undefined && kv !== null && kv !== false) {
    const k = typeof kv === 'string' ? kv.trim() : kv;
    if (k === true || (typeof k === 'string' && ['on', 'yes', 'true', 'default'].includes(k.toLowerCase()))) {
      if (distribution) kernel = defaultKernelPackage(distribution, architecture);
    } else if (typeof k === 'string' && ['off', 'no', 'false', 'none', ''].includes(k.toLowerCase())) kernel = null;
    else if (typeof k !== 'string') bad('spec.kernel', `must be true, false or a kernel package name, not ${describe(kv)}`);
    else if (!pkgRe.test(k)) bad('spec.kernel', `${JSON.stringify(k)} is not a package name (or true for ${distribution ? defaultKernelPackage(distribution, architecture) : "the distribution's kernel"})`);
    else kernel = k;
  }
  let firmware: Firmware | null = null;
  const fw = str('firmware');
  if (fw !== undefined && fw.toLowerCase() !== 'auto') {
    const k = fw.toLowerCase();
    const allowed = BOOT_FIRMWARES[architecture];
    if (!(FIRMWARES as readonly string[]).includes(k)) bad('spec.firmware', `${JSON.stringify(fw)} is not a firmware (${FIRMWARES.join(', ')}; hybrid boots one disk under both UEFI and BIOS)`);
    else if (allowed && !allowed.includes(k as Firmware)) bad('spec.firmware', `${architecture} disks boot with ${allowed.join(' or ')} only, not ${k}`);
    else firmware = k as Firmware;
  }
  const serialConsole = onOff('serialConsole', true);
  const network = oneOf<Network>('network', NETWORKS, 'none', 'a network setting');
  const cloudInit = oneOf<CloudInitMode>('cloudInit', CLOUD_INIT_MODES, 'none', 'a cloud-init mode');
  const users: SpecUser[] = [];
  list('users').forEach((item, i) => {
    const path = `spec.users[${i}]`;
    if (typeof item !== 'object' || item === null || Array.isArray(item)) return bad(path, `must be a mapping with name and sshKeys, not ${describe(item)}`);
    const u = item as Record<string, unknown>;
    for (const k of Object.keys(u)) if (!['name', 'sshKeys'].includes(k)) bad(`${path}.${k}`, 'unknown field (name, sshKeys)');
    if (typeof u.name !== 'string' || !USER.test(u.name)) return bad(`${path}.name`, `${describe(u.name)} is not a user name (lower case letters, digits, _ and -, at most 32)`);
    if (users.some((x) => x.name === u.name)) return bad(`${path}.name`, `${u.name} is listed twice`);
    const keys = u.sshKeys === undefined || u.sshKeys === null ? [] : typeof u.sshKeys === 'string' ? [u.sshKeys] : u.sshKeys;
    if (!Array.isArray(keys)) return bad(`${path}.sshKeys`, `must be a list of SSH public keys, not ${describe(u.sshKeys)}`);
    const sshKeys: string[] = [];
    keys.forEach((key, j) => {
      if (typeof key !== 'string' || !SSH_KEY.test(key.trim())) bad(`${path}.sshKeys[${j}]`, 'is not an OpenSSH public key on one line ("ssh-ed25519 AAAA… comment", as in id_ed25519.pub)');
      else sshKeys.push(key.trim());
    });
    users.push({ name: u.name, sshKeys });
  });
  if (parent?.kernel && kernel !== parent.kernel) {
    bad('spec.kernel', `the parent's tree has the kernel ${parent.kernel} already: a stage keeps its parent's kernel (leave kernel out)`);
  }
  const bootable = outputs.filter((o) => BOOTABLE_OUTPUTS.includes(o));
  if (bootable.length > 0) {
    if (!BOOT_FIRMWARES[architecture]) bad('spec.outputs', `${bootable.join(' and ')} output: osfarm makes bootable disks for ${Object.keys(BOOT_FIRMWARES).join(' and ')}, not ${architecture} (ext4, squashfs and the tars work for every architecture)`);
    else if (kernel === null && distribution) {
      bad('spec.outputs', `${bootable.join(' and ')} output boots the image's own kernel, and this spec installs none: set kernel: true (flag --kernel on) to install ${defaultKernelPackage(distribution, architecture)} with an initramfs, or name a kernel package; for the file system alone use ext4`);
    }
  }

  if (parent) {
    const mine: Record<string, unknown> = { distribution, release, architecture, mirrors, components, backend, gpgCheck };
    for (const key of FIXED_FIELDS) {
      const theirs = (parent as unknown as Record<string, unknown>)[key];
      if (stableStringify(mine[key]) !== stableStringify(theirs)) {
        bad(`spec.${key}`, `is ${JSON.stringify(mine[key])}, but the parent's is ${JSON.stringify(theirs)}: a spec keeps its parent's ${FIXED_FIELDS.join(', ')} (it is built on the parent's tree)`);
      }
    }
    groups.forEach((g, i) => {
      if (distribution && planGroup(distribution, g)?.kind === 'variant') bad(`spec.groups[${i}]`, `${JSON.stringify(g)} chooses a bootstrap variant: only the core spec (the one without a parent) can`);
    });
  }
  if (issues.length > 0 || !distribution || release === undefined) throw new SpecError(issues);

  const spec: BuildSpec = {
    name: name ?? `${distribution}-${release}-${architecture}`,
    distribution,
    release,
    architecture,
    groups,
    packages,
    rootPasswordHash,
    files,
    commands,
    hostname,
    locale,
    timezone,
    outputs,
    mirrors,
    components,
    backend,
    gpgCheck,
    sourceDateEpoch,
    kernel,
    firmware,
    serialConsole,
    network,
    users,
    cloudInit,
  };
  if (parent) spec.parent = parent;
  if (plainPassword !== undefined) {
    // The salt comes from the rest of the spec: equal specs give equal images.
    spec.rootPasswordHash = sha512Crypt(plainPassword, deriveSalt(canonicalJson(spec)));
    plainPassword = undefined;
  }
  return spec;
}

const MAX_PARENTS = 32;

/**
 * The spec with `fields` set on it and on every parent: for settings of the whole chain,
 * such as a package source given on the command line (a stage keeps its parent's).
 */
export function setOnChain(spec: BuildSpec, fields: Partial<Omit<BuildSpec, 'parent'>>): BuildSpec {
  return { ...spec, ...fields, ...(spec.parent ? { parent: setOnChain(spec.parent, fields) } : {}) };
}

/**
 * Fills the fields `raw` leaves out from its parent: the fixed and inherited ones, unless
 * the spec gives them in another form (`mirror`, `rootPassword`). The fixed ones are
 * checked against the parent afterwards.
 */
function inheritDefaults(raw: Record<string, unknown>, parent: BuildSpec): void {
  const given = (key: string) => raw[key] !== undefined && raw[key] !== null;
  for (const key of [...FIXED_FIELDS, ...INHERITED_FIELDS]) {
    if (given(key) || aliasesOf(key).some(given)) continue;
    raw[key] = (parent as unknown as Record<string, unknown>)[key];
  }
}

/**
 * The parent a spec names: an inline spec (a mapping), a spec file (a path, relative to
 * this spec's directory; `base` also finds `base.yaml`, `.yml`, `.json`, `.xml`), or a
 * name `options.resolveParent` knows (an image in the repository). Problems in the
 * parent are reported under `spec.parent`.
 */
function parentSpec(ref: unknown, options: SpecOptions, bad: (path: string, message: string) => void): BuildSpec | undefined {
  const chain = options.chain ?? [];
  const nested = (load: () => BuildSpec, where: string): BuildSpec | undefined => {
    if (chain.length >= MAX_PARENTS) {
      bad('spec.parent', `more than ${MAX_PARENTS} parents: the chain is too deep`);
      return undefined;
    }
    try {
      return load();
    } catch (err) {
      if (!(err instanceof SpecError)) throw err;
      for (const i of err.issues) bad(`spec.parent${where}${i.path.replace(/^spec/, '')}`, i.message);
      return undefined;
    }
  };
  const sub: SpecOptions = { ...options, chain };
  if (typeof ref === 'object' && ref !== null && !Array.isArray(ref)) {
    return nested(() => specFromObject(ref, { ...sub, chain: [...chain, '(inline)'] }), '');
  }
  if (typeof ref !== 'string' || ref.trim() === '') {
    bad('spec.parent', `must be a spec file's path, an image name or an inline spec, not ${describe(ref)}`);
    return undefined;
  }
  const base = options.baseDir ?? process.cwd();
  const file = [ref, ...(formatOf(ref) ? [] : ['.yaml', '.yml', '.json', '.xml'].map((e) => `${ref}${e}`))]
    .map((p) => resolve(base, p))
    .find((p) => {
      try {
        return statSync(p).isFile();
      } catch {
        return false;
      }
    });
  if (file) {
    if (chain.includes(file)) {
      bad('spec.parent', `the parent chain loops: ${[...chain, file].join(' → ')}`);
      return undefined;
    }
    return nested(() => loadSpec(file, sub), ` (${file})`);
  }
  const found = options.resolveParent?.(ref);
  if (found) return nested(() => specFromObject(found.raw, { ...sub, baseDir: found.baseDir ?? base, chain: [...chain, ref] }), ` (${ref})`);
  bad('spec.parent', `${JSON.stringify(ref)} is neither a spec file (no ${resolve(base, ref)}) nor a known image name`);
  return undefined;
}

function describe(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'a list';
  if (typeof v === 'object') return 'a mapping';
  return `${typeof v} ${JSON.stringify(v)}`.slice(0, 60);
}

/** A file entry as it enters the digest: what lands in the image, not where it came from. */
export interface CanonicalFile {
  destination: string;
  /** `file`, `directory` or `content`. */
  type: 'file' | 'directory' | 'content';
  mode: string | null;
  /** sha256 of the file's bytes, or of a directory's listing (names, types, modes, contents). */
  sha256: string;
}

/** The canonical form: every field, defaults filled, lists normalised, keys sorted by `canonicalJson`. */
export type CanonicalSpec = Omit<BuildSpec, 'files' | 'parent' | LaterField> &
  Partial<Pick<BuildSpec, LaterField>> & { specVersion: number; files: CanonicalFile[]; parent?: CanonicalSpec };

/** Fields added after spec version 1: absent from the canonical form while they hold their default. */
type LaterField = 'kernel' | 'firmware' | 'serialConsole' | 'network' | 'users' | 'cloudInit';

/** Whether a spec field holds the default it is left out of the canonical form with (fields.ts). */
export function atDefault(field: SpecField, value: unknown): boolean {
  return 'default' in field && stableStringify(value ?? field.default) === stableStringify(field.default);
}

const uniqSorted = (xs: string[]) => [...new Set(xs)].sort();

/**
 * The spec with defaults filled and order-free lists (groups, packages, outputs, components)
 * sorted and de-duplicated. `commands`, `files` and `mirrors` keep their order (it matters).
 * Files are replaced by the sha256 of their contents, so the digest follows what goes into
 * the image and not where the spec happens to live.
 */
export function canonicalSpec(spec: BuildSpec): CanonicalSpec {
  const out: Record<string, unknown> = { specVersion: SPEC_VERSION };
  const from = spec as unknown as Record<string, unknown>;
  for (const f of CANONICAL_FIELDS) {
    const v = from[f.name];
    // A field added after version 1 that holds its default stays out: older digests hold.
    if (atDefault(f, v)) continue;
    switch (f.shape) {
      case 'set':
        out[f.name] = uniqSorted(v as string[]);
        break;
      case 'list':
        out[f.name] = [...(v as string[])];
        break;
      case 'files':
        out[f.name] = spec.files.map(canonicalFile);
        break;
      case 'users':
        out[f.name] = spec.users.map((u) => ({ name: u.name, sshKeys: [...u.sshKeys] }));
        break;
      case 'parent':
        // Only when there is one, so a spec without a parent keeps its digest.
        if (spec.parent) out[f.name] = canonicalSpec(spec.parent);
        break;
      default:
        out[f.name] = v;
    }
  }
  return out as CanonicalSpec;
}

function canonicalFile(f: SpecFile): CanonicalFile {
  if (f.content !== undefined) {
    return { destination: f.destination, type: 'content', mode: f.mode ?? null, sha256: sha256(Buffer.from(f.content, 'utf8')) };
  }
  const st = statSync(f.source!);
  if (st.isDirectory()) return { destination: f.destination, type: 'directory', mode: f.mode ?? null, sha256: treeDigest(f.source!) };
  return { destination: f.destination, type: 'file', mode: f.mode ?? null, sha256: sha256(readFileSync(f.source!)) };
}

function sha256(data: Buffer | string): string {
  return createHash('sha256').update(data).digest('hex');
}

/** sha256 over a directory's sorted listing: relative path, type, permission bits, and content digest or link target. */
export function treeDigest(dir: string): string {
  const h = createHash('sha256');
  const walk = (rel: string) => {
    const names = readdirSync(join(dir, rel)).sort();
    for (const n of names) {
      const r = rel ? `${rel}/${n}` : n;
      const p = join(dir, r);
      const st = lstatSync(p);
      const mode = (st.mode & 0o7777).toString(8);
      if (st.isSymbolicLink()) h.update(`${r}\0l\0${mode}\0${readlinkSync(p)}\n`);
      else if (st.isDirectory()) {
        h.update(`${r}\0d\0${mode}\n`);
        walk(r);
      } else if (st.isFile()) h.update(`${r}\0f\0${mode}\0${sha256(readFileSync(p))}\n`);
      else h.update(`${r}\0o\0${mode}\n`);
    }
  };
  walk('');
  return h.digest('hex');
}

/** JSON with object keys sorted at every level: equal values give equal text. */
export function stableStringify(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map((v) => stableStringify(v === undefined ? null : v)).join(',')}]`;
  if (value !== null && typeof value === 'object') {
    const entries = Object.keys(value as object)
      .filter((k) => (value as Record<string, unknown>)[k] !== undefined)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${stableStringify((value as Record<string, unknown>)[k])}`);
    return `{${entries.join(',')}}`;
  }
  return JSON.stringify(value);
}

/** The canonical spec as JSON text (sorted keys, no spaces). */
export function canonicalJson(spec: BuildSpec): string {
  return stableStringify(canonicalSpec(spec));
}

/** sha256 (hex) of `canonicalJson(spec)`: the request checksum. Everything in the canonical spec is in it. */
export function specDigest(spec: BuildSpec): string {
  return sha256(canonicalJson(spec));
}

/**
 * A genfs-style target, `<distribution>-<release>[-<architecture>]` (`debian-bookworm-amd64`,
 * `centos-stream-9-x86_64`, `ubuntu-noble`), or the old `SL4_x86_64` form.
 */
export function parseTarget(target: string): { distribution: string; release: string; architecture?: string } {
  const old = /^([A-Za-z]+?)(\d+)_([A-Za-z0-9_]+)$/.exec(target);
  if (old && !target.includes('-')) return { distribution: old[1]!, release: old[2]!, architecture: old[3]! };
  const parts = target.split('-');
  const isArch = (s: string) => (ARCHITECTURES as readonly string[]).includes(s.toLowerCase()) || ARCH_ALIASES[s.toLowerCase()] !== undefined;
  let architecture: string | undefined;
  if (parts.length >= 3 && isArch(parts[parts.length - 1]!)) architecture = parts.pop();
  if (parts.length < 2) {
    throw new SpecError([{ path: 'spec.distribution', message: `target ${JSON.stringify(target)} must look like <distribution>-<release>[-<architecture>], e.g. debian-bookworm-amd64` }]);
  }
  const release = parts.pop()!;
  return { distribution: parts.join('-'), release, ...(architecture ? { architecture } : {}) };
}
