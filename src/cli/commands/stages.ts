/** `osfarm stages …`: the stage cache (list, garbage-collect, verify, remove, backends). */
import { existsSync } from 'node:fs';

import { stagesMaxSize } from '../../base/env.js';
import { invalidArgument, OsfarmError } from '../../base/errors.js';
import { probeCowMethods, type CowMethodReport } from '../../stages/cow/index.js';
import { gcStages, stageSummary, type StageSummary } from '../../app/stages.js';
import { type GcResult, StageStore, stagesRoot, type VerifyResult } from '../../stages/store.js';
import { parseSize } from '../../base/size.js';
import { type Command, type CommandContext, flag, type Flags, type ParsedArgs, str } from '../command.js';
import { bytes, table } from '../format.js';

const STORE_OPTIONS: Flags = {
  stages: { type: 'string', value: 'DIR', complete: 'dir', description: 'the stage store (default $OSFARM_STAGES, else REPO/stages)' },
};
const STORE_USAGE = '[--stages DIR]';

function root(args: ParsedArgs, ctx: CommandContext): string {
  return stagesRoot({ root: str(args, 'stages'), repo: ctx.repoPath });
}

/** Opens an existing store without creating it (a missing store lists as empty). */
function openStore(args: ParsedArgs, ctx: CommandContext): Promise<StageStore> {
  return StageStore.open({ root: root(args, ctx), create: false });
}

const short = (tag: string | null) => (tag ? tag.slice(0, 12) : '-');
const when = (iso: string) => (iso ? iso.replace('T', ' ').replace(/\.\d+Z$/, 'Z') : '-');

const ls: Command<StageSummary> = {
  name: 'ls',
  aliases: ['list'],
  summary: 'list cached stages: tag, parent, size, last use, hits',
  usage: [STORE_USAGE],
  options: STORE_OPTIONS,
  examples: [{ command: 'osfarm stages ls', what: 'the stages of the repository\'s store, and what they hold' }],
  async run(args, ctx) {
    return stageSummary(root(args, ctx));
  },
  render(r) {
    if (r.stages.length === 0) return `no stages in ${r.root}`;
    const rows = r.stages.map((s) => [
      short(s.tag),
      short(s.parent),
      bytes(s.size),
      bytes(s.ownSize),
      when(s.lastUsed),
      String(s.hits),
      s.inUse ? `in use (${s.leases.length})` : '',
      s.label ?? '',
    ]);
    return [
      table(rows, ['tag', 'parent', 'size', 'own', 'last use', 'hits', 'use', 'label']),
      `${r.stages.length} stage(s), ${bytes(r.totalOwnSize)} on disk (sum of own sizes), backend ${r.backend ?? '-'}, in ${r.root}`,
    ].join('\n');
  },
};

const gc: Command<GcResult> = {
  name: 'gc',
  summary: 'remove least recently used stages until the store fits in --max-size (never a stage in use)',
  usage: [`--max-size N [--dry-run] ${STORE_USAGE}`],
  options: {
    ...STORE_OPTIONS,
    'max-size': { type: 'string', value: 'N', description: 'the bound, like 20G or 500M (default $OSFARM_STAGES_MAX)' },
    'dry-run': { type: 'boolean', description: 'say what would be removed, remove nothing' },
  },
  examples: [
    { command: 'osfarm stages gc --max-size 20G', what: 'keep the store under 20 GiB, least recently used stages first' },
    { command: 'osfarm stages gc --max-size 0 --dry-run', what: 'what removing every unused stage would free' },
  ],
  async run(args, ctx) {
    const max = str(args, 'max-size') ?? stagesMaxSize();
    if (max === undefined) throw invalidArgument('stages gc needs --max-size N (e.g. 20G), or $OSFARM_STAGES_MAX');
    const maxSize = parseSize(max, '--max-size');
    return gcStages(root(args, ctx), { maxSize, dryRun: flag(args, 'dry-run'), signal: ctx.signal });
  },
  render(r) {
    const lines = r.removed.map((s) => `${r.dryRun ? 'would remove' : 'removed'} ${short(s.tag)}  ${bytes(s.ownSize)}  last used ${when(s.lastUsed)}${s.label ? `  ${s.label}` : ''}`);
    lines.push(`${bytes(r.before)} → ${bytes(r.after)} (bound ${bytes(r.maxSize)})${r.dryRun ? ', dry run' : ''}`);
    if (r.after > r.maxSize && r.inUse.length > 0) lines.push(`still over the bound: ${r.inUse.length} stage(s) in use (${r.inUse.map(short).join(', ')})`);
    const swept = r.swept.temps + r.swept.checkouts + r.swept.views;
    if (swept > 0) lines.push(`swept ${r.swept.temps} unfinished build(s), ${r.swept.checkouts} checkout(s), ${r.swept.views} view(s) left by dead processes`);
    return lines.join('\n');
  },
};

const verify: Command<VerifyResult> = {
  name: 'verify',
  summary: 'check every stage (record, tree, parent, tag); exits 1 listing the problems',
  usage: [STORE_USAGE],
  options: STORE_OPTIONS,
  examples: [{ command: 'osfarm stages verify --stages /var/cache/osfarm-stages', what: 'check a store' }],
  async run(args, ctx) {
    const store = await openStore(args, ctx);
    const r = store.verify();
    if (!r.ok) process.exitCode = 1;
    return r;
  },
  render(r) {
    const lines = r.problems.map((p) => `problem: ${p.tag ? `${short(p.tag)}: ` : ''}${p.problem} (${p.path})`);
    for (const l of r.leftovers) lines.push(`${l.live ? 'in progress' : 'left by a dead process (swept by the next build or gc)'}: ${l.path}`);
    lines.push(r.ok ? `ok: ${r.stages} stage(s) in ${r.root}` : `${r.problems.length} problem(s) in ${r.root}`);
    return lines.join('\n');
  },
};

const rm: Command<{ removed: string[] }> = {
  name: 'rm',
  aliases: ['remove'],
  summary: 'remove stages by tag or unique prefix (--recursive: with the stages built on them)',
  usage: [`TAG... [--recursive] ${STORE_USAGE}`],
  options: { ...STORE_OPTIONS, recursive: { type: 'boolean', short: 'r', description: 'also remove the stages built on it' } },
  operands: { complete: 'none', min: 1 },
  examples: [{ command: 'osfarm stages rm 3f2a9c --recursive', what: 'remove a stage and everything built on it (to rebuild from a newer mirror)' }],
  async run(args, ctx) {
    const store = await openStore(args, ctx);
    if (!existsSync(store.root)) throw new OsfarmError('OSFARM_NOT_FOUND', `no stage store in ${store.root}`);
    const removed: string[] = [];
    for (const t of args.positionals) removed.push(...(await store.remove(t, { recursive: flag(args, 'recursive') })));
    return { removed };
  },
  render(r) {
    return r.removed.map((t) => `removed ${t}`).join('\n');
  },
};

const backends: Command<{ root: string; recorded: string | null; backends: CowMethodReport[] }> = {
  name: 'backends',
  summary: 'which copy-on-write backends work for the store here, and why not',
  usage: [STORE_USAGE],
  options: STORE_OPTIONS,
  examples: [{ command: 'osfarm stages backends', what: 'btrfs, overlayfs, reflink or copy: what works where the store is' }],
  async run(args, ctx) {
    const store = await StageStore.open({ root: root(args, ctx) });
    return { root: store.root, recorded: store.recordedCowMethod(), backends: await probeCowMethods(store.root) };
  },
  render(r) {
    const first = r.backends.find((b) => b.available)?.name;
    return [
      table(
        r.backends.map((b) => [b.name, b.available ? (b.name === r.recorded ? 'yes (used)' : !r.recorded && b.name === first ? 'yes (auto)' : 'yes') : 'no', b.detail]),
        ['backend', 'works', 'detail'],
      ),
      r.recorded ? `this store uses ${r.recorded}` : `a new store here would use ${first}`,
    ].join('\n');
  },
};

const command: Command = {
  name: 'stages',
  section: 'build',
  summary: 'the stage cache: ls, gc --max-size N, verify, rm TAG, backends',
  usage: [],
  subcommands: [ls, gc, verify, rm, backends] as Command[],
};
export default command;
