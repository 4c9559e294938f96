/**
 * A spec's stage chain: one stage per spec on its parent chain (core → base → appliance),
 * each with the tag that names it in the stage store. docs/stages.md says exactly what
 * enters a tag and why.
 */
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

import { familyOf } from '../spec/distros.js';
import { fieldsFor, SECRET_FIELDS, SET_FIELDS } from '../spec/fields.js';
import { canonicalSpec, type BuildSpec } from '../spec/spec.js';
import { stageTag, type StageTagInput } from '../stages/tag.js';

/** How each stage is made: the core by the bootstrap driver, the stages above it by the package manager inside the parent's tree. */
export type StageStep = 'bootstrap' | 'install';

export interface StagePlan {
  /** This stage's own spec (its parent is the previous stage's spec). */
  spec: BuildSpec;
  step: StageStep;
  tag: string;
  parentTag: string | null;
  inputs: StageTagInput;
  /** For listings: "debian bookworm core (core)", "+ base". */
  label: string;
}

export interface ChainContext {
  /** The bootstrap driver that makes the core (mmdebstrap, debootstrap, dnf…). */
  driver: string;
  /** Its version and osfarm's: osfarm's own steps (configure, sweep, clamp) change trees too. */
  driverVersion: string;
  /** osfarm's version, for the stages above the core (Debian: their tool, apt, is in the parent's tree). */
  osfarmVersion: string;
  /** The SOURCE_DATE_EPOCH every stage is built with (file times are clamped to it), or null. */
  sourceDateEpoch: number | null;
  /** Where packages come from when the spec names no mirror: the host's apt or dnf sources. Default: read them. */
  hostSources?: string | null;
}

/** The specs of a chain, core first. */
export function specChain(spec: BuildSpec): BuildSpec[] {
  const chain: BuildSpec[] = [];
  for (let s: BuildSpec | undefined = spec; s; s = s.parent) chain.unshift(s);
  return chain;
}

/** sha256 of the host's package sources (apt sources.list and sources.list.d, or yum.repos.d): what an empty mirror list means. */
export function hostSourcesDigest(family: 'deb' | 'rpm'): string | null {
  const h = createHash('sha256');
  const files: string[] = [];
  const dirs = family === 'deb' ? ['/etc/apt/sources.list.d'] : ['/etc/yum.repos.d'];
  if (family === 'deb') files.push('/etc/apt/sources.list');
  for (const d of dirs) {
    try {
      for (const n of readdirSync(d).sort()) if (/\.(list|sources|repo)$/.test(n)) files.push(join(d, n));
    } catch {
      /* none */
    }
  }
  let found = false;
  for (const f of files) {
    try {
      h.update(`${f}\0${readFileSync(f)}\0`);
      found = true;
    } catch {
      /* missing */
    }
  }
  return found ? h.digest('hex') : null;
}

/** The spec fields that change a stage's tree. */
const TREE_FIELDS = fieldsFor('tree');

/**
 * What enters a stage's tag from its spec: the spec format's version and every field of the
 * canonical spec that changes the tree (spec/fields.ts), with the resolved
 * SOURCE_DATE_EPOCH. Left out: the name and output formats (no effect on the tree), the
 * parent (its tag is there instead), the package source and bootstrap tool (in `source`
 * and `driver`).
 */
function stageConfig(spec: BuildSpec, step: StageStep, epoch: number | null): Record<string, unknown> {
  const canonical = canonicalSpec(spec) as unknown as Record<string, unknown>;
  const config: Record<string, unknown> = { specVersion: canonical.specVersion };
  for (const name of TREE_FIELDS) config[name] = canonical[name];
  return { ...config, sourceDateEpoch: epoch, step };
}

/** The stage plans of a spec's chain, core first, each tag over its parent's. */
export function planStages(spec: BuildSpec, ctx: ChainContext): StagePlan[] {
  const chain = specChain(spec);
  const core = chain[0]!;
  const hostSources = core.mirrors.length > 0 ? null : ctx.hostSources !== undefined ? ctx.hostSources : hostSourcesDigest(familyOf(core.distribution));
  const source = { mirrors: core.mirrors, components: [...new Set(core.components)].sort(), gpgCheck: core.gpgCheck, hostSources };
  const plans: StagePlan[] = [];
  let parentTag: string | null = null;
  for (const [i, s] of chain.entries()) {
    const step: StageStep = i === 0 ? 'bootstrap' : 'install';
    const inputs: StageTagInput = {
      config: stageConfig(s, step, ctx.sourceDateEpoch),
      parentTag,
      driver: step === 'bootstrap' ? ctx.driver : familyOf(s.distribution) === 'deb' ? "apt-get in the parent's tree" : `${ctx.driver} --installroot on the parent's tree`,
      // The host's dnf installs RPM stages; apt inside the parent's tree (covered by the parent's tag) installs Debian ones.
      driverVersion: step === 'bootstrap' || familyOf(s.distribution) === 'rpm' ? ctx.driverVersion : `osfarm ${ctx.osfarmVersion}`,
      source,
      sets: SET_FIELDS,
      secrets: SECRET_FIELDS,
    };
    const tag = stageTag(inputs);
    const label = i === 0 ? `${s.distribution} ${s.release} ${s.architecture} core (${s.name})` : `${'+'.repeat(i)} ${s.name}`;
    plans.push({ spec: s, step, tag, parentTag, inputs, label });
    parentTag = tag;
  }
  return plans;
}
