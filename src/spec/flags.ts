/**
 * genfs-style build flags to a spec: `-t debian-bookworm-amd64 -g minbase -p jq`, on their
 * own or on top of a spec file. What the flags add to an image (packages, package groups,
 * files, commands, host name, locale, time zone, root password, kernel, network, users,
 * cloud-init) becomes a stage of its own
 * above the spec they start from, so that flag builds differing only in those share their
 * core (and a spec file's stages): docs/stages.md, "Flag builds".
 */
import { DEB_VARIANT_ALIASES, DEB_VARIANTS } from './distros.js';
import { SpecError } from './errors.js';
import { SPEC_FIELDS } from './fields.js';
import { type BuildSpec, parseTarget, setOnChain } from './spec.js';

/** What the command line gave. */
export interface SpecFlags {
  /** `-t <distribution>-<release>[-<architecture>]`. */
  target?: string;
  /** The field table's flags by field name: a string for a scalar, the values (split at commas) for a list. */
  fields: Record<string, string | string[] | undefined>;
  /** `--file SOURCE:DESTINATION`. */
  files?: { source: string; destination: string }[];
  /** `--user NAME[:KEYS.pub]`: users with their SSH public keys. */
  users?: { name: string; sshKeys: string[] }[];
  /** `--no-gpg-check`. */
  noGpgCheck?: boolean;
  rootPassword?: string;
  /** The mirrors when neither the spec file nor a flag names one ($OSFARM_MIRROR). */
  defaultMirrors?: string[];
}

/** The fields whose flags add to an image rather than choose how its core is made (a kernel too: a stage above a shared core installs it). */
const ADDITIONS = new Set(['packages', 'groups', 'commands', 'hostname', 'locale', 'timezone', 'kernel', 'network', 'cloudInit']);
/** This image's own, shaping only its outputs: on the stage of the flags when there is one. */
const OWN = new Set(['name', 'outputs', 'firmware', 'serialConsole']);

/** A group that picks the bootstrap variant (minbase, core, buildd…): it belongs to the core. */
function isVariant(group: string): boolean {
  const g = group.toLowerCase();
  return (DEB_VARIANTS as readonly string[]).includes(g) || g in DEB_VARIANT_ALIASES;
}

/**
 * The spec object (for `specFromObject`) the flags describe, over `file` (a spec file,
 * already read and validated) if given. Flags that choose the core (target, variant group,
 * mirror, backend, gpg check, SOURCE_DATE_EPOCH) set it on the spec they start from; the
 * additions go on a spec whose parent that is, when there are any.
 */
export function specFromFlags(file: BuildSpec | undefined, flags: SpecFlags): Record<string, unknown> {
  const base: Record<string, unknown> = file ? { ...file } : {};
  const top: Record<string, unknown> = {};
  const own: Record<string, unknown> = {};
  if (flags.target !== undefined) Object.assign(base, parseTarget(flags.target));
  const add = (into: Record<string, unknown>, name: string, values: string[], mode: 'append' | 'replace' | undefined) => {
    if (values.length === 0) return;
    into[name] = mode === 'append' ? [...((into[name] as string[] | undefined) ?? []), ...values] : values;
  };
  for (const { name, flag } of SPEC_FIELDS) {
    const v = flag ? flags.fields[name] : undefined;
    if (v === undefined) continue;
    const into = OWN.has(name) ? own : ADDITIONS.has(name) ? top : base;
    if (!Array.isArray(v)) into[name] = v;
    else if (name === 'groups') {
      add(base, name, v.filter(isVariant), flag!.list);
      add(top, name, v.filter((g) => !isVariant(g)), 'append');
    } else add(into, name, v, into === top ? 'append' : flag!.list);
  }
  if (flags.files?.length) top.files = flags.files;
  if (flags.users?.length) top.users = flags.users;
  if (flags.rootPassword !== undefined) top.rootPassword = flags.rootPassword;
  if ((base.mirrors === undefined || (base.mirrors as unknown[]).length === 0) && flags.defaultMirrors?.length) base.mirrors = flags.defaultMirrors;
  if (flags.noGpgCheck) base.gpgCheck = false;
  // The package source given here is that of the whole chain: a stage keeps its parent's.
  const chainWide = { ...(base.mirrors !== undefined ? { mirrors: base.mirrors as string[] } : {}), ...(base.gpgCheck === false ? { gpgCheck: false } : {}) };
  if (base.parent && Object.keys(chainWide).length > 0) base.parent = setOnChain(base.parent as BuildSpec, chainWide);
  if (file === undefined && base.distribution === undefined) {
    throw new SpecError([{ path: 'spec.distribution', message: 'is required: give a spec file, or -t <distribution>-<release>[-<architecture>] (e.g. -t debian-bookworm-amd64)' }]);
  }
  if (Object.keys(top).length === 0) return { ...base, ...own };
  // A stage of the flags' additions: it keeps the spec file's name and formats unless the flags give others.
  if (file) Object.assign(top, { name: file.name, outputs: file.outputs });
  return { ...top, ...own, parent: base };
}
