/**
 * Stage tags: the checksum of everything that decides a stage's tree.
 *
 *     tag = sha256( canonical JSON of
 *             { format: "osfarm-stage/1", parent, driver, driverVersion, source, config } )
 *
 * Canonical JSON: object keys sorted at every level, no spaces, `undefined` members
 * dropped; lists keep their order except the ones the caller names as sets, which are
 * sorted and de-duplicated. Keys the caller names as excluded are left out, and keys it
 * names as secrets are refused. The store knows nothing of what the config means: the
 * builder says which of its fields are sets and secrets (docs/stages.md lists exactly
 * what it puts in a tag and why).
 */
import { createHash } from 'node:crypto';

import { OsfarmError } from '../base/errors.js';

/** Tag format version: part of every tag, bumped when the meaning of a tag input changes. */
export const STAGE_TAG_FORMAT = 'osfarm-stage/1';

const TAG = /^[0-9a-f]{64}$/;

/** What a stage tag is computed from. Defaults must be filled by the caller (an absent key and its default value give different tags). */
export interface StageTagInput {
  /** What this stage does to the tree: for a core, distribution/release/architecture/variant; for a base or appliance, packages, files, commands, settings. */
  config: Record<string, unknown>;
  /** The parent stage's tag; null for a core stage (built from nothing). */
  parentTag: string | null;
  /** The tool that populates the tree (mmdebstrap, dnf, osfarm-configure, …). */
  driver: string;
  /** Its version (and osfarm's, if osfarm's own steps change the tree). */
  driverVersion: string;
  /** Where packages come from: mirror URLs, a dated snapshot mirror URL, a repo file digest; null if the stage fetches nothing. */
  source: unknown;
  /** Dotted paths in `config` of lists that are sets (sorted, de-duplicated). Default none. */
  sets?: readonly string[];
  /** Top-level config keys to leave out because they do not change the tree. Default none. */
  exclude?: readonly string[];
  /** Keys that must never reach a tag (or stage.json) at any depth of config or source: plain secrets. Default none. */
  secrets?: readonly string[];
}

/** The object that is hashed; stage.json keeps it as `inputs` so `verify` can recompute the tag. */
export interface CanonicalTagInput {
  format: string;
  parent: string | null;
  driver: string;
  driverVersion: string;
  source: unknown;
  config: Record<string, unknown>;
}

/** JSON with object keys sorted at every level; refuses values JSON cannot carry faithfully. */
export function canonicalJson(value: unknown, path = '$'): string {
  if (value === null) return 'null';
  switch (typeof value) {
    case 'string':
    case 'boolean':
      return JSON.stringify(value);
    case 'number':
      if (!Number.isFinite(value)) throw invalid(`${path} is ${value}, which JSON cannot represent`);
      return JSON.stringify(value);
    case 'object': {
      if (Array.isArray(value)) {
        return `[${value.map((v, i) => {
          if (v === undefined) throw invalid(`${path}[${i}] is undefined`);
          return canonicalJson(v, `${path}[${i}]`);
        }).join(',')}]`;
      }
      const proto = Object.getPrototypeOf(value);
      if (proto !== Object.prototype && proto !== null) throw invalid(`${path} is a ${proto?.constructor?.name ?? 'non-plain object'}: give plain JSON data`);
      const obj = value as Record<string, unknown>;
      const keys = Object.keys(obj).filter((k) => obj[k] !== undefined).sort();
      return `{${keys.map((k) => `${JSON.stringify(k)}:${canonicalJson(obj[k], `${path}.${k}`)}`).join(',')}}`;
    }
    default:
      throw invalid(`${path} is a ${typeof value}: give plain JSON data`);
  }
}

function invalid(message: string): OsfarmError {
  return new OsfarmError('OSFARM_INVALID_ARGUMENT', `stage tag input: ${message}`);
}

function findSecrets(value: unknown, path: string, keys: readonly string[], out: string[]): void {
  if (Array.isArray(value)) value.forEach((v, i) => findSecrets(v, `${path}[${i}]`, keys, out));
  else if (value !== null && typeof value === 'object') {
    for (const [k, v] of Object.entries(value as Record<string, unknown>)) {
      if (keys.includes(k) && v !== undefined && v !== null) out.push(`${path}.${k}`);
      findSecrets(v, `${path}.${k}`, keys, out);
    }
  }
}

/** Sorts and de-duplicates the list at a dotted path (if present) in a deep copy of `config`. */
function normaliseSet(config: Record<string, unknown>, dotted: string): void {
  const parts = dotted.split('.');
  let node: unknown = config;
  for (const p of parts.slice(0, -1)) {
    if (node === null || typeof node !== 'object' || Array.isArray(node)) return;
    node = (node as Record<string, unknown>)[p];
  }
  if (node === null || typeof node !== 'object' || Array.isArray(node)) return;
  const last = parts[parts.length - 1]!;
  const list = (node as Record<string, unknown>)[last];
  if (list === undefined || list === null) return;
  if (!Array.isArray(list)) throw invalid(`config.${dotted} is declared a set but is not a list`);
  const byText = new Map<string, unknown>();
  list.forEach((v, i) => byText.set(canonicalJson(v, `config.${dotted}[${i}]`), v));
  (node as Record<string, unknown>)[last] = [...byText.keys()].sort().map((k) => byText.get(k));
}

/** The canonical object hashed into a tag (sets normalised, non-tree keys dropped, inputs checked). */
export function canonicalTagInput(input: StageTagInput): CanonicalTagInput {
  const { config, parentTag, driver, driverVersion, source } = input;
  if (config === null || typeof config !== 'object' || Array.isArray(config)) throw invalid('config must be an object');
  if (parentTag !== null && (typeof parentTag !== 'string' || !TAG.test(parentTag))) throw invalid(`parentTag ${JSON.stringify(parentTag)} is not a stage tag (64 hex digits) or null`);
  if (typeof driver !== 'string' || driver === '') throw invalid('driver must name the tool that populates the stage');
  if (typeof driverVersion !== 'string' || driverVersion === '') throw invalid('driverVersion must be given (a new driver version may make a different tree)');
  const secrets: string[] = [];
  findSecrets(config, 'config', input.secrets ?? [], secrets);
  findSecrets(source, 'source', input.secrets ?? [], secrets);
  if (secrets.length > 0) {
    throw invalid(`${secrets.join(', ')}: a plain password never enters a tag or stage.json; hash it first (crypt(3), e.g. rootPasswordHash)`);
  }
  const exclude = input.exclude ?? [];
  // A deep copy through canonical JSON: checks every value and detaches from the caller's object.
  const copy = JSON.parse(canonicalJson(config, 'config')) as Record<string, unknown>;
  for (const k of exclude) delete copy[k];
  for (const s of input.sets ?? []) normaliseSet(copy, s);
  const src = source === undefined ? null : (JSON.parse(canonicalJson(source, 'source')) as unknown);
  return { format: STAGE_TAG_FORMAT, parent: parentTag, driver, driverVersion, source: src, config: copy };
}

/** sha256 (hex) of the canonical JSON of a canonical tag input. */
export function tagOfCanonical(canonical: CanonicalTagInput): string {
  return createHash('sha256').update(canonicalJson(canonical)).digest('hex');
}

/** The stage's tag: sha256 over the canonical JSON of its inputs. Equal trees-to-be give equal tags. */
export function stageTag(input: StageTagInput): string {
  return tagOfCanonical(canonicalTagInput(input));
}

/** Whether a string is a full stage tag. */
export function isStageTag(s: unknown): boolean {
  return typeof s === 'string' && TAG.test(s);
}
