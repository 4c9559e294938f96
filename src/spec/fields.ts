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
  { name: 'name', shape: 'scalar', stage: 'none', chain: 'own', flag: { name: 'name' } },
  { name: 'distribution', shape: 'scalar', stage: 'tree', chain: 'fixed', flag: { name: 'distribution' } },
  { name: 'release', shape: 'scalar', stage: 'tree', chain: 'fixed', flag: { name: 'release' } },
  { name: 'architecture', shape: 'scalar', stage: 'tree', chain: 'fixed', flag: { name: 'arch', short: 'a' } },
  { name: 'groups', shape: 'set', stage: 'tree', chain: 'own', xml: { item: 'group' }, flag: { name: 'group', short: 'g', list: 'append', commas: true } },
  { name: 'packages', shape: 'set', stage: 'tree', chain: 'own', xml: { item: 'package' }, flag: { name: 'package', short: 'p', list: 'append', commas: true } },
  { name: 'rootPassword', shape: 'scalar', stage: 'none', chain: 'own', becomes: 'rootPasswordHash', secret: true },
  { name: 'rootPasswordHash', shape: 'scalar', stage: 'tree', chain: 'inherited' },
  { name: 'files', shape: 'files', stage: 'tree', chain: 'own', xml: { item: 'file' } },
  { name: 'commands', shape: 'list', stage: 'tree', chain: 'own', xml: { item: 'command', cdata: true }, flag: { name: 'run', list: 'append' } },
  { name: 'hostname', shape: 'scalar', stage: 'tree', chain: 'inherited', flag: { name: 'hostname' } },
  { name: 'locale', shape: 'scalar', stage: 'tree', chain: 'inherited', flag: { name: 'locale' } },
  { name: 'timezone', shape: 'scalar', stage: 'tree', chain: 'inherited', flag: { name: 'timezone' } },
  { name: 'outputs', shape: 'set', stage: 'none', chain: 'own', xml: { item: 'output' }, flag: { name: 'format', short: 'f', list: 'replace', commas: true } },
  { name: 'mirror', shape: 'list', stage: 'source', chain: 'fixed', becomes: 'mirrors' },
  { name: 'mirrors', shape: 'list', stage: 'source', chain: 'fixed', xml: { item: 'mirror' }, flag: { name: 'mirror', list: 'replace' } },
  { name: 'components', shape: 'set', stage: 'source', chain: 'fixed', xml: { item: 'component' } },
  { name: 'backend', shape: 'scalar', stage: 'driver', chain: 'fixed', flag: { name: 'backend' } },
  { name: 'gpgCheck', shape: 'scalar', stage: 'source', chain: 'fixed' },
  { name: 'sourceDateEpoch', shape: 'scalar', stage: 'tree', chain: 'inherited', flag: { name: 'source-date-epoch' } },
  // Booting (docs/disk.md). The kernel is installed by the first stage that names one; the
  // firmware and the serial console only shape the disk (its boot loaders and command line).
  { name: 'kernel', shape: 'scalar', stage: 'tree', chain: 'inherited', default: null, flag: { name: 'kernel' } },
  { name: 'firmware', shape: 'scalar', stage: 'none', chain: 'inherited', default: null, flag: { name: 'firmware' } },
  { name: 'serialConsole', shape: 'scalar', stage: 'none', chain: 'inherited', default: true, flag: { name: 'serial-console' } },
  { name: 'network', shape: 'scalar', stage: 'tree', chain: 'inherited', default: 'none', flag: { name: 'network' } },
  { name: 'users', shape: 'users', stage: 'tree', chain: 'own', default: [], xml: { item: 'user' } },
  { name: 'cloudInit', shape: 'scalar', stage: 'tree', chain: 'inherited', default: 'none', flag: { name: 'cloud-init' } },
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
